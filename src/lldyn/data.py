"""Training and probe data: one type per kind of example, loaders for the formats users have.

* :class:`PreferenceExample` (id, prompt, chosen, rejected) — prompt is a string or a list of chat
  messages; chosen/rejected are the assistant's response text.
* :class:`SFTExample` (id, prompt, response).
* :class:`PromptExample` (id, prompt, fields) — a prompt to sample from (GRPO) or to judge on, with the
  other fields of its row (a gold ``answer``, ``answer_aliases``, a pair's ``chosen``/``rejected``).

Formats read by :func:`load_preferences` (auto-detected per row):

* TRL explicit prompt: ``{"prompt": str | messages, "chosen": str | messages, "rejected": ...}``
* TRL implicit prompt: ``{"chosen": messages, "rejected": messages}`` (shared prefix = prompt) or
  whole-dialogue strings;
* HH-RLHF raw dialogues ``"\\n\\nHuman: ... \\n\\nAssistant: ..."``: the prompt is the shared prefix up
  to the last ``\\n\\nAssistant:``, turned into chat messages;

from ``.jsonl`` / ``.jsonl.gz`` / ``.json`` / ``.parquet`` files, the built-in data set (``builtin``,
``builtin:train``, ``builtin:test``) and Hugging Face data set names (``hf:OWNER/NAME``, ``hf:OWNER/NAME/SUBSET``
for a subset's folder such as ``hf:Anthropic/hh-rlhf/harmless-base``, or a name that is not a path; works
offline from the cache). Every problem names the file, line and field.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar, Union

from lldyn.errors import LldynError, Where

# pyarrow and datasets are imported where they are used: only Parquet files and Hub data sets need them,
# and both are slow to import.

Message = dict[str, str]
Prompt = Union[str, list[Message]]
HH_ASSISTANT = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"
BUILTIN = "builtin"
ExampleT = TypeVar("ExampleT")
log = logging.getLogger("lldyn")
# Resource limits (docs/reliability.md): rows are streamed, but the examples lldyn keeps are held in
# memory, so a file with more rows than this is refused unless --limit reads only its first rows.
MAX_ROWS_ENV = "LLDYN_MAX_ROWS"
DEFAULT_MAX_ROWS = 1_000_000
# A .json file is one document that must be parsed whole; above this size use .jsonl (streamed).
MAX_JSON_BYTES_ENV = "LLDYN_MAX_JSON_BYTES"
DEFAULT_MAX_JSON_BYTES = 512 * 2**20


@dataclass(frozen=True)
class PreferenceExample:
    """One preference pair. ``extra`` keeps other string fields of the row (e.g. curated rephrases)."""

    id: str
    prompt: Prompt
    chosen: str
    rejected: str
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    where: Where = field(default=Where(), compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected,
                **dict(self.extra)}


@dataclass(frozen=True)
class SFTExample:
    """One supervised (prompt, response) example."""

    id: str
    prompt: Prompt
    response: str
    where: Where = field(default=Where(), compare=False, repr=False)


@dataclass(frozen=True)
class PromptExample:
    """One prompt (:func:`load_prompts`). ``fields``: every other field of its row, as read (for a preference
    row also its ``chosen`` and ``rejected`` text), e.g. the gold ``answer`` and ``answer_aliases``."""

    id: str
    prompt: Prompt
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False)
    where: Where = field(default=Where(), compare=False, repr=False)


# --------------------------------------------------------------------------- reading rows


def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise LldynError(f"bad value {raw!r} in the environment", field=name, expected="a positive integer")
    return value


def max_rows() -> int:
    """The most rows lldyn reads from one data or probe file (``$LLDYN_MAX_ROWS``, default 1,000,000)."""
    return _env_limit(MAX_ROWS_ENV, DEFAULT_MAX_ROWS)


def too_many_rows(file: str | Path, cap: int, what: str = "rows") -> LldynError:
    return LldynError(f"more than {cap:,} {what}: too many to hold in memory (limit {MAX_ROWS_ENV}={cap})",
                      file=str(file), field=MAX_ROWS_ENV,
                      expected=f"--limit N to read only the first N (streamed), or a larger {MAX_ROWS_ENV}")


def _capped(rows: Iterator[tuple[dict[str, Any], Where]], file: str | Path) -> Iterator[tuple[dict[str, Any], Where]]:
    """Pass rows through, refusing the one after :func:`max_rows` (a consumer with a limit stops earlier)."""
    cap = max_rows()
    for n, item in enumerate(rows):
        if n >= cap:
            raise too_many_rows(file, cap)
        yield item


def _open_bytes(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_rows(source: str | Path) -> Iterator[tuple[dict[str, Any], Where]]:
    """Yield ``(row, where)`` from a JSONL(.gz), JSON (a list of objects) or Parquet file.

    JSONL and Parquet are streamed; more than :func:`max_rows` rows is an error (stop reading
    earlier to take only the first rows of a bigger file).
    """
    return _capped(_read_rows(Path(source)), source)


def _read_rows(path: Path) -> Iterator[tuple[dict[str, Any], Where]]:
    if not path.exists():
        raise LldynError("data file not found", file=str(path),
                         expected="a .jsonl/.json/.parquet file, builtin, builtin:train|test or hf:NAME")
    if path.is_dir():
        raise LldynError("is a directory, not a data file", file=str(path),
                         expected="a .jsonl, .json or .parquet file")
    name = path.name.lower()
    if name.endswith(".parquet"):
        yield from _read_parquet(path)
        return
    cap = _env_limit(MAX_JSON_BYTES_ENV, DEFAULT_MAX_JSON_BYTES)
    if name.endswith((".json", ".json.gz")):
        yield from _read_json_list(path, cap)
    elif name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        yield from _read_jsonl(path, cap)
    else:
        raise LldynError("unknown data file format", file=str(path),
                         expected="a .jsonl, .jsonl.gz, .json or .parquet file")


def _read_json_list(path: Path, cap: int) -> Iterator[tuple[dict[str, Any], Where]]:
    """The objects of a .json(.gz) file holding a list (or ``{"data": [...]}``), parsed whole: at most
    ``cap`` bytes, decompressed."""
    if path.stat().st_size > cap:
        raise _too_large_for_json(path, f"{path.stat().st_size:,}", cap)
    try:
        with _open_bytes(path) as fh:
            raw = fh.read(cap + 1)  # decompressed bytes: a small .json.gz can hold a huge document
        if len(raw) > cap:
            raise _too_large_for_json(path, "more than {:,} (decompressed)".format(cap), cap)
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise LldynError(f"invalid JSON: {err.msg}", file=str(path), line=err.lineno) from None
    except (OSError, UnicodeDecodeError) as err:
        raise LldynError(f"cannot read file: {err}", file=str(path)) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise LldynError("a .json data file must hold a list of objects", file=str(path),
                         expected="[{...}, {...}] or use .jsonl")
    for i, row in enumerate(data):
        where = Where(f"{path} item {i}", None)
        if not isinstance(row, dict):
            raise where.error(f"item is a {type(row).__name__}", expected="a JSON object")
        yield row, where


def _too_large_for_json(path: Path, size: str, cap: int) -> LldynError:
    return LldynError(f"{size} bytes is too large to parse as one JSON document (limit "
                      f"{MAX_JSON_BYTES_ENV}={cap})", file=str(path), field=MAX_JSON_BYTES_ENV,
                      expected="a .jsonl file (one object per line, streamed) or a larger limit")


def _read_jsonl(path: Path, cap: int) -> Iterator[tuple[dict[str, Any], Where]]:
    """The objects of a JSON-lines file, streamed: one line is held in memory at a time, and at most
    ``cap`` bytes of it."""
    try:
        with _open_bytes(path) as fh:
            lineno = 0
            while raw := fh.readline(cap + 1):
                lineno += 1
                where = Where(str(path), lineno)
                row = _json_line(raw, where, cap)
                if row is not None:
                    yield row, where
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise LldynError(f"cannot read file: {err}", file=str(path)) from None


def _json_line(raw: bytes, where: Where, cap: int) -> dict[str, Any] | None:
    """The object on one line of a JSONL file (None for a blank line)."""
    if len(raw) > cap and not raw.endswith(b"\n"):
        raise where.error(f"line longer than {cap:,} bytes (limit {MAX_JSON_BYTES_ENV})",
                          field=MAX_JSON_BYTES_ENV, expected="one JSON object per line, or a larger limit")
    if not raw.strip():
        return None
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise where.error(f"not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1})",
                          expected="UTF-8 encoded JSON lines") from None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise where.error(f"malformed JSON line: {err.msg} at column {err.colno}",
                          expected="one JSON object per line") from None
    if not isinstance(row, dict):
        raise where.error(f"line holds a JSON {type(row).__name__}", expected="a JSON object")
    return row


def _read_parquet(path: Path) -> Iterator[tuple[dict[str, Any], Where]]:
    """Rows of a Parquet file, streamed in record batches (never the whole table in memory)."""
    import pyarrow.parquet as pq

    i = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        for batch in batches:
            for row in batch.to_pylist():
                yield row, Where(f"{path} row {i}", None)
                i += 1
    except LldynError:
        raise
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
        raise LldynError(f"cannot read Parquet file: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
                         file=str(path), expected="a Parquet file") from None


# --------------------------------------------------------------------------- field checks


def _messages(value: Any, key: str, where: Where) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise where.error(f"got {type(value).__name__}", field=key, expected="a non-empty list of chat messages")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise where.error("bad chat message", field=f"{key}[{i}]",
                              expected='{"role": "user|assistant|system", "content": "..."}')
        if msg["role"] != "system" and not msg["content"].strip():
            raise where.error(f"empty {msg['role']} message", field=f"{key}[{i}].content", expected="non-empty text")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def parse_prompt(value: Any, where: Where, key: str = "prompt") -> Prompt:
    if isinstance(value, str):
        if not value.strip():
            raise where.error("empty text", field=key, expected="a non-empty string or chat messages")
        return value
    if isinstance(value, list):
        return _messages(value, key, where)
    raise where.error(f"got {type(value).__name__}", field=key, expected="a string or a list of chat messages")


def _response(value: Any, key: str, where: Where, conversation: bool = False) -> str:
    """A response is text, or chat messages: one assistant message (beside a 'prompt': TRL's explicit
    format, where earlier turns belong in the prompt), or with ``conversation`` a whole conversation
    whose last message is the assistant's reply."""
    if isinstance(value, list):
        msgs = _messages(value, key, where)
        if msgs[-1]["role"] != "assistant":
            raise where.error("last message is not the assistant's", field=key, expected="an assistant reply")
        if not conversation and len(msgs) != 1:
            raise where.error(f"{len(msgs)} messages beside a 'prompt'", field=key,
                              expected="one assistant message (earlier turns belong in the prompt)")
        text = msgs[-1]["content"]
    elif isinstance(value, str):
        text = value
    else:
        raise where.error(f"got {type(value).__name__}", field=key, expected="a string or chat messages")
    if not text.strip():
        raise where.error("empty response", field=key, expected="a non-empty string")
    return text


def parse_hh_dialogue(text: str, where: Where, key: str) -> tuple[list[Message], str]:
    """Split an HH-RLHF dialogue into (prompt messages, final assistant response).

    The prompt is everything up to the last ``\\n\\nAssistant:``; turns alternate ``Human``/``Assistant``.
    """
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise where.error("no '\\n\\nAssistant:' turn", field=key, expected="an HH-RLHF dialogue")
    head, response = text[:cut], text[cut + len(HH_ASSISTANT):].strip()
    before, *turns = head.split(HH_HUMAN)
    if before.strip() or not turns:
        raise where.error("dialogue does not start with a '\\n\\nHuman:' turn", field=key,
                          expected="an HH-RLHF dialogue (\\n\\nHuman: ... \\n\\nAssistant: ...)")
    messages: list[Message] = []
    for n, chunk in enumerate(turns, 1):
        parts = chunk.split(HH_ASSISTANT)
        for role, content in zip(["user"] + ["assistant"] * (len(parts) - 1), parts):
            if not content.strip():
                raise where.error(f"empty {'Human' if role == 'user' else 'Assistant'} turn (exchange {n})",
                                  field=key, expected="non-empty turns")
            messages.append({"role": role, "content": content.strip()})
    return messages, response


def _row_id(row: Mapping[str, Any], where: Where, index: int, stem: str) -> str:
    value = row.get("id")
    if value is None:
        return f"{stem}-{index}"
    if not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise where.error(f"bad id {value!r}", field="id", expected="a non-empty string or integer")
    return str(value)


def parse_preference_row(row: Mapping[str, Any], where: Where, index: int = 0, stem: str = "ex") -> PreferenceExample:
    """One preference row in any supported format → :class:`PreferenceExample`."""
    for key in ("chosen", "rejected"):
        if key not in row:
            raise where.error("missing field", field=key, expected="a preference pair with 'chosen' and 'rejected'")
    ex_id = _row_id(row, where, index, stem)
    chosen_raw, rejected_raw = row["chosen"], row["rejected"]
    if "prompt" in row:
        prompt = parse_prompt(row["prompt"], where)
        chosen = _response(chosen_raw, "chosen", where)
        rejected = _response(rejected_raw, "rejected", where)
    elif isinstance(chosen_raw, list) and isinstance(rejected_raw, list):
        c = _messages(chosen_raw, "chosen", where)
        r = _messages(rejected_raw, "rejected", where)
        if c[:-1] != r[:-1] or len(c) < 2:
            raise where.error("chosen and rejected do not share a prompt", field="chosen",
                              expected="conversations that differ only in the last assistant message, or a 'prompt' field")
        prompt = c[:-1]
        chosen = _response(c, "chosen", where, conversation=True)
        rejected = _response(r, "rejected", where, conversation=True)
    elif isinstance(chosen_raw, str) and isinstance(rejected_raw, str):
        if HH_ASSISTANT not in chosen_raw:
            raise where.error("no prompt: add a 'prompt' field or use HH-RLHF dialogues", field="prompt",
                              expected="a 'prompt' field, or '\\n\\nHuman: ... \\n\\nAssistant: ...' dialogues")
        prompt, chosen = parse_hh_dialogue(chosen_raw, where, "chosen")
        r_prompt, rejected = parse_hh_dialogue(rejected_raw, where, "rejected")
        if r_prompt != prompt:
            raise where.error("chosen and rejected dialogues have different prompts", field="rejected",
                              expected="the same dialogue up to the last '\\n\\nAssistant:'")
        if not chosen or not rejected:
            raise where.error("empty final assistant turn", field="chosen" if not chosen else "rejected",
                              expected="a non-empty response")
    else:
        raise where.error("chosen and rejected have different types", field="rejected",
                          expected="both strings or both message lists")
    extra = {k: v for k, v in row.items() if k not in ("id", "prompt", "chosen", "rejected")
             and (isinstance(v, (str, int, float)) or (isinstance(v, list) and all(isinstance(x, str) for x in v)))}
    return PreferenceExample(id=ex_id, prompt=prompt, chosen=chosen, rejected=rejected, extra=extra, where=where)


def parse_sft_row(row: Mapping[str, Any], where: Where, index: int = 0, stem: str = "ex") -> SFTExample:
    """``{prompt, response}``, TRL ``{prompt, completion}``, ``{messages}`` or a preference row (its chosen)."""
    ex_id = _row_id(row, where, index, stem)
    if "messages" in row:
        msgs = _messages(row["messages"], "messages", where)
        if len(msgs) < 2:
            raise where.error("needs a prompt turn and an assistant reply", field="messages")
        return SFTExample(ex_id, msgs[:-1], _response(msgs, "messages", where, conversation=True), where)
    if "chosen" in row and "rejected" in row:
        pref = parse_preference_row(row, where, index, stem)
        return SFTExample(pref.id, pref.prompt, pref.chosen, where)
    if "prompt" not in row:
        raise where.error("missing field", field="prompt", expected="SFT data with 'prompt' and 'response'")
    key = "response" if "response" in row else "completion" if "completion" in row else None
    if key is None:
        raise where.error("missing field", field="response", expected="SFT data with 'prompt' and 'response'")
    return SFTExample(ex_id, parse_prompt(row["prompt"], where), _response(row[key], key, where), where)


# --------------------------------------------------------------------------- sources


def builtin_path() -> Path:
    """The built-in preference data shipped in the package."""
    return Path(str(resources.files("lldyn") / "builtin" / "preferences.jsonl"))


def _hf_rows(name: str, split: str) -> Iterator[tuple[dict[str, Any], Where]]:
    """Rows of a Hugging Face data set ``owner/name`` or ``owner/name/data_dir`` (a subset's folder, as
    HH-RLHF's ``Anthropic/hh-rlhf/harmless-base``), from the local cache when offline."""
    parts = name.split("/")
    repo, data_dir = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        import datasets

        ds = datasets.load_dataset(repo, data_dir=data_dir, split=split)
    except Exception as err:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError)
        raise LldynError(f"cannot load Hugging Face data set: {str(err).splitlines()[0]}", file=name,
                         expected="a data set name in the local cache (offline) or a data file path") from None
    for i, row in enumerate(ds):
        yield dict(row), Where(f"{name}[{split}] row {i}", None)


def _source_rows(source: str, split: str) -> tuple[Iterator[tuple[dict[str, Any], Where]], str, str | None]:
    """Rows of ``source`` plus a stem for default ids and the split to filter on (built-in only)."""
    if source == BUILTIN or source.startswith(BUILTIN + ":"):
        want = source.partition(":")[2] or None
        return read_rows(builtin_path()), "builtin", want
    if source.startswith("hf:"):
        return _capped(_hf_rows(source[3:], split), source[3:]), source[3:], None
    path = Path(source).expanduser()
    if path.exists() or any(source.endswith(s) for s in (".jsonl", ".json", ".parquet", ".gz", ".ndjson")):
        return read_rows(path), path.name.split(".")[0], None
    if "/" in source and not source.startswith((".", "/", "~")):
        return _capped(_hf_rows(source, split), source), source, None
    raise LldynError("data not found", file=source,
                     expected="a data file (.jsonl/.json/.parquet), 'builtin[:train|:test]' or hf:NAME")


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise LldynError(f"limit must be >= 1, got {limit}", field="limit", expected="a positive number of rows")


def _warn_skipped(skipped: list[LldynError], source: str) -> None:
    if skipped:
        log.warning("%s: skipped %d invalid row(s); first: %s", source, len(skipped), skipped[0])


def is_pair_row(row: Mapping[str, Any]) -> bool:
    """Whether a row is shaped like a preference pair (it has ``chosen`` and ``rejected``)."""
    return "chosen" in row and "rejected" in row


def is_preference_data(source: str, split: str = "train") -> bool:
    """Whether ``source`` holds preference pairs or SFT rows, told by its first row (of the wanted split)."""
    rows, _, want_split = _source_rows(str(source), split)
    for row, _ in rows:
        if want_split is None or row.get("split") == want_split:
            return is_pair_row(row)
    return False


def load_preferences(source: str, split: str = "train", limit: int | None = None,
                     skip_invalid: bool = False) -> list[PreferenceExample]:
    """Load preference pairs from ``source`` (see module docstring); at least one pair or an error.

    A row with bad content (missing, empty or mistyped fields) is an error naming file, line and
    field; with ``skip_invalid`` such rows are skipped and counted in a warning instead (real data
    sets have a few: 6 of the 1,812 HH-RLHF test pairs have an empty or mismatched final turn).
    Malformed files (bad JSON) are always an error.
    """
    _check_limit(limit)
    skipped: list[LldynError] = []
    # A first row without 'chosen' says the file is not preference data (SFT rows, say): that is the
    # format, not a bad row to skip.
    pairs = _examples(source, split, parse_preference_row, skip_invalid, skipped,
                      not_this_format=lambda row: "chosen" not in row)
    out = list(islice(_unique_ids(pairs), limit))
    _warn_skipped(skipped, str(source))
    if not out:
        raise LldynError("no preference pairs found (empty file?)", file=str(source),
                         expected="at least one row with prompt, chosen and rejected")
    return out


def load_sft(source: str, split: str = "train", limit: int | None = None,
             skip_invalid: bool = False) -> list[SFTExample]:
    """Load SFT examples from ``source``; preference data gives (prompt, chosen). See :func:`load_preferences`."""
    _check_limit(limit)
    skipped: list[LldynError] = []
    out = list(islice(_examples(source, split, parse_sft_row, skip_invalid, skipped), limit))
    _warn_skipped(skipped, str(source))
    if not out:
        raise LldynError("no SFT examples found (empty file?)", file=str(source),
                         expected="at least one row with prompt and response")
    return out


def parse_prompt_row(row: Mapping[str, Any], where: Where, index: int = 0, stem: str = "ex") -> PromptExample:
    """A preference row (any format :func:`parse_preference_row` reads) or a ``{"prompt": ...}`` row
    (optional ``id``, any other fields) → :class:`PromptExample`."""
    if is_pair_row(row):
        pair = parse_preference_row(row, where, index, stem)
        return PromptExample(pair.id, pair.prompt, {"chosen": pair.chosen, "rejected": pair.rejected, **pair.extra},
                             where)
    if "prompt" not in row:
        raise where.error("missing field", field="prompt",
                          expected='rows with "prompt" (a string or chat messages) or preference pairs')
    fields = {k: v for k, v in row.items() if k not in ("id", "prompt")}
    return PromptExample(_row_id(row, where, index, stem), parse_prompt(row["prompt"], where), fields, where)


def load_prompts(source: str, split: str = "train", limit: int | None = None,
                 skip_invalid: bool = False) -> list[PromptExample]:
    """Prompts from ``source``: preference data (its prompts) or ``{"prompt": ...}`` rows (see
    :func:`parse_prompt_row`), from the sources :func:`load_preferences` reads; ids must be unique.
    ``skip_invalid`` skips (and counts) rows that cannot be read, as :func:`load_preferences` does."""
    _check_limit(limit)
    skipped: list[LldynError] = []
    out = list(islice(_unique_ids(_examples(source, split, parse_prompt_row, skip_invalid, skipped)), limit))
    _warn_skipped(skipped, str(source))
    if not out:
        raise LldynError("no prompts found (empty file?)", file=str(source), expected='rows with a "prompt" field')
    return out


def _examples(source: str, split: str, parse: Callable[[dict[str, Any], Where, int, str], ExampleT],
              skip_invalid: bool, skipped: list[LldynError],
              not_this_format: Callable[[dict[str, Any]], bool] = lambda row: False) -> Iterator[ExampleT]:
    """The rows of ``source`` (of the wanted split) parsed in order, read as far as they are consumed.

    A row ``parse`` refuses is an error, or with ``skip_invalid`` appended to ``skipped``, unless it is the
    first and ``not_this_format`` says the whole source is in another format.
    """
    rows, stem, want_split = _source_rows(str(source), split)
    found = False
    for i, (row, where) in enumerate(rows):
        if want_split is not None and row.get("split") != want_split:
            continue
        try:
            example = parse(row, where, i, stem)
        except LldynError as err:
            if not skip_invalid or (not found and not_this_format(row)):
                raise
            skipped.append(err)
            continue
        found = True
        yield example


def _unique_ids(examples: Iterable[ExampleT]) -> Iterator[ExampleT]:
    seen: dict[str, Where] = {}
    for ex in examples:
        if ex.id in seen:
            raise ex.where.error(f"duplicate id {ex.id!r} (first at {seen[ex.id].file}:{seen[ex.id].line})",
                                 field="id", expected="unique ids")
        seen[ex.id] = ex.where
        yield ex


def sft_from_preferences(pairs: Sequence[PreferenceExample], include_rejected: bool = False) -> list[SFTExample]:
    """SFT examples (x, y+) — and (x, y−) too when ``include_rejected`` (the paper's *extend*)."""
    out = [SFTExample(f"{p.id}/chosen", p.prompt, p.chosen, p.where) for p in pairs]
    if include_rejected:
        out += [SFTExample(f"{p.id}/rejected", p.prompt, p.rejected, p.where) for p in pairs]
    return out


def prompt_text(prompt: Prompt) -> str:
    """A readable one-string view of a prompt (the last user turn for chat prompts)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]
