"""Probe sets: the responses whose log π lldyn watches during finetuning (paper Sec. 4.1, Fig. 3).

For every probe prompt x_u (taken from the training pairs) a probe set holds one response per
*family*:

============================  =================================================================
``chosen``                    y+, the preferred answer
``rejected``                  y−, the dispreferred answer
``chosen_rephrase_semantic``  y+ in other words, same meaning (the paper's y_gpts+)
``chosen_rephrase_format``    y+'s form, another meaning (y_gptf+)
``rejected_rephrase_*``       the same two rewrites of y−
``other_chosen``              y_j+: another training prompt's chosen answer (never equal to y+)
``test_chosen``               a held-out prompt's chosen answer
``random_sentence``           human text of about the same length, unrelated
``chosen_shuffled``           a word permutation of y+
``test_shuffled``             a word permutation of ``test_chosen``
============================  =================================================================

and two families made at evaluation time by :mod:`lldyn.tracking`: ``argmax`` (y*, the current
model's teacher-forced argmax along y+) and ``initial_sample`` (the starting model's own greedy
response, generated once when tracking starts).

A probe set is saved as ``probes.jsonl``, one :class:`Probe` per line::

    {"id": "p1/chosen", "prompt_id": "p1", "family": "chosen", "prompt": ..., "response": ...,
     "source_ids": ["p1"], "method": "data"}
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lldyn.data import Prompt, PreferenceExample, max_rows, too_many_rows
from lldyn.errors import LldynError, Where
from lldyn.io import atomic_write_jsonl, dumps, read_jsonl_lines
from lldyn.rephrase import RephraseRequest

# tqdm is imported only when a progress bar is asked for.

REPHRASE_FAMILIES = ("chosen_rephrase_semantic", "chosen_rephrase_format",
                     "rejected_rephrase_semantic", "rejected_rephrase_format")
STATIC_FAMILIES = ("chosen", "rejected", *REPHRASE_FAMILIES, "other_chosen", "test_chosen", "random_sentence",
                   "chosen_shuffled", "test_shuffled")
EVAL_FAMILIES = ("argmax", "initial_sample")
FAMILIES = STATIC_FAMILIES + EVAL_FAMILIES
# Families a probe file may hold: ``argmax`` changes with the model and is never stored.
FILE_FAMILIES = STATIC_FAMILIES + ("initial_sample",)


@dataclass(frozen=True)
class Probe:
    """One probe response. ``source_ids`` are the data ids it came from, ``method`` how it was made."""

    prompt_id: str
    family: str
    prompt: Prompt
    response: str
    source_ids: tuple[str, ...] = ()
    method: str = "data"

    @property
    def id(self) -> str:
        return f"{self.prompt_id}/{self.family}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "prompt_id": self.prompt_id, "family": self.family, "prompt": self.prompt,
                "response": self.response, "source_ids": list(self.source_ids), "method": self.method}


@dataclass(frozen=True)
class ProbeSet:
    """An ordered collection of probes, at most one per (prompt_id, family), each prompt with a ``chosen``."""

    probes: tuple[Probe, ...]
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for p in self.probes:
            if p.family not in FILE_FAMILIES:
                raise LldynError(f"unknown probe family {p.family!r} ({p.id})", field="family",
                                 expected="one of " + ", ".join(FILE_FAMILIES))
            if p.id in seen:
                raise LldynError(f"duplicate probe id {p.id!r}", field="id", expected="one probe per (prompt_id, family)")
            seen.add(p.id)
        missing = [pid for pid in self.prompt_ids if f"{pid}/chosen" not in seen]
        if missing:
            raise LldynError(f"prompt {missing[0]!r} has no 'chosen' probe", field="family",
                             expected="a 'chosen' row per prompt (y+ is the source of the argmax family)")

    def __len__(self) -> int:
        return len(self.probes)

    def __iter__(self):
        return iter(self.probes)

    @property
    def prompt_ids(self) -> list[str]:
        """Prompt ids in first-seen order."""
        return list(dict.fromkeys(p.prompt_id for p in self.probes))

    @property
    def families(self) -> list[str]:
        present = {p.family for p in self.probes}
        return [f for f in FAMILIES if f in present]

    def get(self, prompt_id: str, family: str) -> Probe | None:
        for p in self.probes:
            if p.prompt_id == prompt_id and p.family == family:
                return p
        return None

    def select(self, prompt_ids: Iterable[str]) -> "ProbeSet":
        """The probes of ``prompt_ids`` only (a rank's shard under accelerate)."""
        keep = set(prompt_ids)
        return ProbeSet(tuple(p for p in self.probes if p.prompt_id in keep), self.meta)

    def with_probes(self, extra: Iterable[Probe]) -> "ProbeSet":
        return ProbeSet(self.probes + tuple(extra), self.meta)

    def without_families(self, families: Iterable[str]) -> "ProbeSet":
        drop = set(families)
        return ProbeSet(tuple(p for p in self.probes if p.family not in drop), self.meta)

    def rows(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.probes]

    def fingerprint(self) -> str:
        """sha256 of the probes' content (ids, prompts, responses; not how they were made)."""
        h = hashlib.sha256()
        for p in self.probes:
            h.update(dumps([p.prompt_id, p.family, p.prompt, p.response]).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_jsonl(path, self.rows())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ProbeSet":
        """Read ``probes.jsonl``; every problem is an :class:`LldynError` naming file, line and field."""
        path = Path(path)
        if not path.is_file():
            raise LldynError("probe file not found", file=str(path), expected="a probes.jsonl from `lldyn probes build`")
        probes: list[Probe] = []
        seen: dict[str, int] = {}
        cap = max_rows()
        # Written whole by `probes build`, so a malformed last line is an error, not a crash's torn tail.
        for lineno, row in read_jsonl_lines(path, torn_tail=False):
            if len(probes) >= cap:
                raise too_many_rows(path, cap, "probes")
            probe = probe_from_row(row, Where(str(path), lineno))
            if probe.id in seen:
                raise LldynError(f"duplicate probe id {probe.id!r} (first on line {seen[probe.id]})", file=str(path),
                                 line=lineno, field="id", expected="one probe per (prompt_id, family)")
            seen[probe.id] = lineno
            probes.append(probe)
        if not probes:
            raise LldynError("probe file is empty", file=str(path), expected="at least one probe")
        try:
            return cls(tuple(probes))
        except LldynError as err:
            raise LldynError(err.message, file=str(path), field=err.field, expected=err.expected) from None

    @classmethod
    def coerce(cls, value: "ProbeSet | str | Path") -> "ProbeSet":
        return value if isinstance(value, ProbeSet) else cls.load(value)


def probe_from_row(row: Mapping[str, Any], where: Where) -> Probe:
    """Check one ``probes.jsonl`` row (fields present, known family, id consistent)."""
    if not isinstance(row, Mapping):
        raise where.error(f"a probe row must be a JSON object, got {type(row).__name__}",
                          expected="a probe row from `lldyn probes build`")
    for key in ("prompt_id", "family", "prompt", "response"):
        if key not in row or row[key] is None:
            raise where.error("missing field", field=key, expected="a probe row from `lldyn probes build`")
    family = row["family"]
    if family not in FILE_FAMILIES:
        hint = " (argmax is computed at evaluation time, never stored)" if family == "argmax" else ""
        raise where.error(f"unknown probe family {family!r}{hint}", field="family",
                          expected="one of " + ", ".join(FILE_FAMILIES))
    prompt_id = row["prompt_id"]
    if not isinstance(prompt_id, (str, int)) or not str(prompt_id).strip():
        raise where.error(f"bad prompt_id {prompt_id!r}", field="prompt_id", expected="a non-empty string")
    prompt = row["prompt"]
    if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt)):
        raise where.error("bad prompt", field="prompt", expected="a non-empty string or chat messages")
    response = row["response"]
    if not isinstance(response, str) or not response.strip():
        raise where.error("empty or non-text response", field="response", expected="a non-empty string")
    # Provenance is optional in a hand-written file (recorded as method "file"), but never guessed at.
    source_ids = row.get("source_ids", [])
    if not isinstance(source_ids, list) or not all(isinstance(x, (str, int)) and str(x).strip() for x in source_ids):
        raise where.error(f"bad source_ids {source_ids!r}", field="source_ids",
                          expected='a list of example ids, e.g. ["hh-12"]')
    method = row.get("method", "file")
    if not isinstance(method, str) or not method.strip():
        raise where.error(f"bad method {method!r}", field="method", expected="a non-empty string (how it was made)")
    probe = Probe(str(prompt_id), family, prompt, response, tuple(str(x) for x in source_ids), method)
    if "id" in row and row["id"] != probe.id:
        raise where.error(f"id {row['id']!r} does not match prompt_id/family {probe.id!r}", field="id",
                          expected="'<prompt_id>/<family>'")
    return probe


# --------------------------------------------------------------------------- building


def load_sentences(path: str | Path | None = None) -> list[str]:
    """Human sentences for the ``random_sentence`` family (default: ``builtin/sentences.txt``)."""
    source = Path(path) if path is not None else Path(str(resources.files("lldyn") / "builtin" / "sentences.txt"))
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LldynError("sentence file not found", file=str(source), expected="one sentence per line") from None
    sentences = [s.strip() for s in lines if s.strip() and not s.startswith("#")]
    if not sentences:
        raise LldynError("sentence file is empty", file=str(source), expected="one sentence per line")
    return sentences


def shuffle_words(text: str, rng: random.Random) -> str:
    """A permutation of ``text``'s whitespace-separated words, different from ``text`` whenever possible."""
    words = text.split()
    if len(set(words)) < 2:
        return " ".join(words)
    for _ in range(20):
        perm = words[:]
        rng.shuffle(perm)
        if perm != words:
            return " ".join(perm)
    return " ".join(words[1:] + words[:1])  # a rotation differs when ≥ 2 distinct words


def _closest_length(sentences: Sequence[str], target: str, rng: random.Random, k: int = 5) -> str:
    """One of the ``k`` sentences whose word count is closest to ``target``'s (random among ties)."""
    n = len(target.split())
    ranked = sorted(sentences, key=lambda s: (abs(len(s.split()) - n), s))
    pool = [s for s in ranked[:k] if s != target] or ranked[:k]
    return rng.choice(pool)


def split_held_out(pairs: Sequence[PreferenceExample], seed: int, fraction: float = 0.15
                   ) -> tuple[list[PreferenceExample], list[PreferenceExample]]:
    """(training pairs, held-out pairs) drawn by ``seed`` when the data has no test split."""
    if len(pairs) < 3:
        raise LldynError(f"need at least 3 preference pairs to hold some out, got {len(pairs)}", field="data",
                         expected="more pairs, or --test-data with held-out pairs")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(fraction * len(pairs)))
    test = set(order[:n_test])
    return [p for i, p in enumerate(pairs) if i not in test], [p for i, p in enumerate(pairs) if i in test]


SELECTIONS = ("first", "spread")


def select_probe_pairs(train: Sequence[PreferenceExample], limit: int | None, select: str = "first",
                       seed: int = 0) -> list[PreferenceExample]:
    """The training pairs that become probe prompts.

    ``first``: the first ``limit`` pairs, in file order. ``spread``: a seeded sample that takes the
    pairs' ``category`` (when the data has one, as the built-in set does) in turn, so a probe set
    covers every kind of prompt instead of the first category of a sorted file; without categories
    it is a seeded random sample.
    """
    if select not in SELECTIONS:
        raise LldynError(f"unknown probe selection {select!r}", field="select", expected=" or ".join(SELECTIONS))
    n = len(train) if limit is None else min(limit, len(train))
    if select == "first":
        return list(train[:n])
    rng = random.Random(seed)
    groups: dict[str, list[PreferenceExample]] = {}
    for p in train:
        groups.setdefault(str(p.extra.get("category", "")), []).append(p)
    for members in groups.values():
        rng.shuffle(members)
    picked: list[PreferenceExample] = []
    while len(picked) < n:
        for members in groups.values():
            if members and len(picked) < n:
                picked.append(members.pop(0))
    return picked


def build_probes(train: Sequence[PreferenceExample], test: Sequence[PreferenceExample], rephraser: Any,
                 limit: int | None = None, seed: int = 0, sentences: Sequence[str] | None = None,
                 progress: bool = False, select: str = "first") -> ProbeSet:
    """All static families for ``limit`` training pairs chosen by :func:`select_probe_pairs`.

    Args:
        train: training pairs; probe prompts are ``limit`` of them (``select``), ``other_chosen`` comes from any.
        test: held-out pairs for ``test_chosen`` / ``test_shuffled`` (never a training prompt).
        rephraser: a :class:`lldyn.rephrase.Rephraser` for the four rephrase families.
        seed: every random choice (other/test pairing, sentences, shuffles) derives from it.
    """
    _check_probe_sources(train, test)
    probe_pairs = select_probe_pairs(train, limit, select, seed)
    sentences = list(sentences) if sentences is not None else load_sentences()
    # The four rephrases of every probe pair, in one batch (a model rephraser batches its calls).
    requests = [RephraseRequest(p, part, mode) for p in probe_pairs for part, mode in REPHRASE_REQUESTS]
    rephrased = rephraser.rephrase(requests, progress=progress)
    rng = random.Random(seed)
    indices: Iterable[int] = range(len(probe_pairs))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="building probes", unit="prompt")
    probes: list[Probe] = []
    for i in indices:
        rephrases = rephrased[len(REPHRASE_FAMILIES) * i:len(REPHRASE_FAMILIES) * (i + 1)]
        probes += _pair_probes(probe_pairs[i], rephrases, train, test, sentences, rng, seed)
    return ProbeSet(tuple(probes), {"seed": seed, "rephraser": getattr(rephraser, "name", "?"), "select": select})


# The (part, mode) of each rephrase request, in the order of REPHRASE_FAMILIES.
REPHRASE_REQUESTS = (("chosen", "semantic"), ("chosen", "format"), ("rejected", "semantic"), ("rejected", "format"))


def _check_probe_sources(train: Sequence[PreferenceExample], test: Sequence[PreferenceExample]) -> None:
    """Refuse data that cannot fill the test_chosen and other_chosen families."""
    if not test:
        raise LldynError("no held-out pairs for the test_chosen family", field="test-data",
                         expected="--test-data, a data set with a test split, or more pairs")
    train_ids = {p.id for p in train}
    clash = [p.id for p in test if p.id in train_ids]
    if clash:
        raise LldynError(f"held-out pair {clash[0]!r} is also a training pair", field="test-data",
                         expected="held-out pairs distinct from the training data")
    if len({p.chosen.strip() for p in train}) < 2:
        raise LldynError("other_chosen needs at least two training pairs with different chosen answers",
                         field="data", expected="more training pairs")


def _pair_probes(pair: PreferenceExample, rephrases: Sequence[tuple[str, str]], train: Sequence[PreferenceExample],
                 test: Sequence[PreferenceExample], sentences: Sequence[str], rng: random.Random,
                 seed: int) -> list[Probe]:
    """The static families of one probe pair; ``rephrases`` are its (text, method) in REPHRASE_FAMILIES order.
    Draws from ``rng`` in a fixed order: the other pair, the held-out pair, the sentence, the two shuffles."""
    x, pid = pair.prompt, pair.id
    probes = [Probe(pid, "chosen", x, pair.chosen, (pid,), "data"),
              Probe(pid, "rejected", x, pair.rejected, (pid,), "data")]
    probes += [Probe(pid, family, x, text, (pid,), method)
               for family, (text, method) in zip(REPHRASE_FAMILIES, rephrases, strict=True)]
    others = [q for q in train if q.id != pid and q.chosen.strip() != pair.chosen.strip()]
    other = others[rng.randrange(len(others))]
    probes.append(Probe(pid, "other_chosen", x, other.chosen, (other.id,), f"other_chosen(seed={seed})"))
    held = test[rng.randrange(len(test))]
    probes.append(Probe(pid, "test_chosen", x, held.chosen, (held.id,), f"held_out(seed={seed})"))
    sentence = _closest_length(sentences, pair.chosen, rng)
    probes.append(Probe(pid, "random_sentence", x, sentence, ("sentences",), "closest_length"))
    probes.append(Probe(pid, "chosen_shuffled", x, shuffle_words(pair.chosen, rng), (pid,),
                        f"word_shuffle(seed={seed})"))
    probes.append(Probe(pid, "test_shuffled", x, shuffle_words(held.chosen, rng), (held.id,),
                        f"word_shuffle(seed={seed})"))
    return probes


def probe_set_summary(probes: ProbeSet) -> str:
    counts: dict[str, int] = {}
    for p in probes:
        counts[p.family] = counts.get(p.family, 0) + 1
    return f"{len(probes.prompt_ids)} prompts, {len(probes)} probes (" + ", ".join(
        f"{f} {counts[f]}" for f in probes.families) + ")"
