"""Write lldyn's built-in preference pairs, ``src/lldyn/builtin/preferences.jsonl``, from ``data/builtin/``.

The rows are data, in ``data/builtin/*.jsonl`` (named fields, one object per line): the hand-written
categories row by row, the templated ones as tables (capitals, antonyms, units, definitions,
examples, translations), and the format-rephrase fillers and non-factual rejections the templates
draw from. This script keeps only the templates and the seeded choices; it is deterministic (fixed
seed, no network, no model), and ``tests/test_builtin_data.py`` checks that it reproduces the
committed file byte for byte and that the data keep their invariants. ``sentences.txt`` next to
the pairs is hand-edited and not written here. ``src/lldyn/builtin/README.md`` describes the fields.

Where a prompt has one checkable answer, its row also gets the gold ``answer`` and ``answer_aliases``:
from the source rows and tables (science facts, capitals, antonyms, translations), or, for numbers
(arithmetic, units), the digits and the number in words derived here.

Every pair has short one-sentence answers and four curated rephrases, the probes of Ren &
Sutherland, "Learning Dynamics of LLM Finetuning" (ICLR 2025, Sec. 4, App. D): ``*_rephrase_semantic``
(same meaning, other words: y_gpts) and ``*_rephrase_format`` (same shape, other meaning: y_gptf).

Usage::

    python scripts/make_builtin_data.py            # writes src/lldyn/builtin/preferences.jsonl
    python scripts/make_builtin_data.py --out DIR  # writes DIR/preferences.jsonl (used by the tests)
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data" / "builtin"
DEFAULT_OUT = ROOT / "src" / "lldyn" / "builtin"
SEED = 20250124
TEST_SHARE = 0.15
KEYS = ("id", "category", "split", "prompt", "chosen", "rejected", "rejected_kind",
        "chosen_rephrase_semantic", "chosen_rephrase_format",
        "rejected_rephrase_semantic", "rejected_rephrase_format")
HAND_WRITTEN = ("science_fact", "how_to", "harmful_request")  # rows as they are, in data/builtin/NAME.jsonl
GOLD = ("answer", "answer_aliases")  # only where the prompt has one checkable answer
REJECTED = ("rejected", "rejected_rephrase_semantic", "rejected_rephrase_format")

PROMPTS = {
    "capital": ["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital city of {c}.",
                "Tell me the capital of {c}.", "What city serves as the capital of {c}?",
                "In one sentence, what is the capital of {c}?"],
    "antonym": ['What is the opposite of "{w}"?', 'Give the antonym of the word "{w}".',
                'Which word means the opposite of "{w}"?', 'Name a word with the opposite meaning to "{w}".'],
    "unit_conversion": ["How many {small} are there in {big}?", "How many {small} make up one {bare}?",
                        "{Big} contains how many {small}?", "Convert one {bare} into {small}."],
    "definition": ['What does the word "{w}" mean?', 'Define "{w}".', "What is {a} {w}?",
                   'Explain what "{w}" means in one sentence.', "Tell me what {a} {w} is."],
    "example": ["Give one example of {k}.", "Name {k}.", "Can you name {k}?", "What is one example of {k}?",
                "Tell me {k}, just one."],
    "translation": ['How do you say "{w}" in {l}?', 'Translate "{w}" into {l}.', 'What is the {l} word for "{w}"?',
                    'What is "{w}" in {l}?'],
}
ARITHMETIC_PROMPTS = {
    "+": ["What is {a} + {b}?", "What is {a} plus {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}."],
    "-": ["What is {a} - {b}?", "Subtract {b} from {a}.", "What is {a} minus {b}?",
          "How much is left if you take {b} from {a}?"],
    "*": ["What is {a} times {b}?", "Multiply {a} by {b}.", "What is {a} x {b}?",
          "Compute the product of {a} and {b}."],
    "/": ["What is {a} divided by {b}?", "Divide {a} by {b}.", "What is {a} / {b}?",
          "How many times does {b} go into {a}?"],
}
ARITHMETIC_ANSWERS = {  # op: (answer, semantic rephrase)
    "+": ("The sum of {a} and {b} is {x}.", "Adding {a} to {b} gives a total of {x}."),
    "-": ("The difference between {a} and {b} is {x}.", "Taking {b} away from {a} leaves {x}."),
    "*": ("The product of {a} and {b} is {x}.", "Multiplying {a} by {b} results in {x}."),
    "/": ("Dividing {a} by {b} gives {x}.", "If {a} is split into {b} equal parts, each part is {x}."),
}


def _read(name: str) -> list[dict]:
    with open(SOURCE / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def _in_words(n: int) -> str:
    """British English, as the data: 72 -> "seventy-two", 1760 -> "one thousand seven hundred and sixty"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10 - 2] + (f"-{_ONES[n % 10]}" if n % 10 else "")
    big, name = (1000, "thousand") if n >= 1000 else (100, "hundred")
    head, rest = f"{_in_words(n // big)} {name}", n % big
    return head if not rest else f"{head}{' and ' if rest < 100 else ' '}{_in_words(rest)}"


def _number_aliases(answer: str) -> list[str]:
    """A number's other accepted forms: "1,000" -> ["1000", "one thousand"], "72" -> ["seventy-two"]."""
    n = int(answer.replace(",", ""))
    return [form for form in (str(n), _in_words(n)) if form != answer]


def _fill(template: str, fillers: list[dict], i: int) -> str:
    """A format rephrase: the answer's sentence shape around the i-th filler (cycled); ``{Key}`` capitalises."""
    row = fillers[i % len(fillers)]
    return template.format(**row, **{_cap(k): _cap(v) for k, v in row.items()})


class _Alternatives:
    """The non-factual rejections, handed out in turn: the kinds cycle, and so does each kind's pool."""

    def __init__(self) -> None:
        self.pools: dict[str, list[dict]] = {}
        for row in _read("alternative_rejections.jsonl"):
            self.pools.setdefault(row["kind"], []).append(row)
        self.calls, self.used = 0, dict.fromkeys(self.pools, 0)

    def next(self) -> dict:
        kind = list(self.pools)[self.calls % len(self.pools)]
        row = self.pools[kind][self.used[kind] % len(self.pools[kind])]
        self.calls, self.used[kind] = self.calls + 1, self.used[kind] + 1
        return {"rejected_kind": kind, **{k: row[k] for k in REJECTED}}


def _pair(alt: _Alternatives, i: int, prompt: str, chosen: str, chosen_sem: str, chosen_fmt: str,
          rejected: str, rejected_sem: str, rejected_fmt: str) -> dict:
    pair = {"prompt": prompt, "chosen": chosen, "chosen_rephrase_semantic": chosen_sem,
            "chosen_rephrase_format": chosen_fmt, "rejected_kind": "wrong_fact",
            **dict(zip(REJECTED, (rejected, rejected_sem, rejected_fmt)))}
    if i % 5 == 4:  # so that each templated category mixes wrong facts with bad behaviour
        pair.update(alt.next())
    return pair


def _right_or_wrong(alt: _Alternatives, i: int, prompt: str, says: str, sem: str, right: str, wrong: str,
                    chosen_fmt: str, rejected_fmt: str, *, aliases: list[str] | None = None, **slots: str) -> dict:
    """Chosen and rejected are the same sentences (``says``, ``sem``) with the right or the wrong ``{x}``.

    With ``aliases`` (a list, possibly empty) the right ``{x}`` is the pair's gold ``answer``.
    """

    def say(template: str, x: str) -> str:
        return template.format(x=x, X=_cap(x), **slots)

    pair = _pair(alt, i, prompt, say(says, right), say(sem, right), chosen_fmt,
                 say(says, wrong), say(sem, wrong), rejected_fmt)
    return pair if aliases is None else {**pair, "answer": right, "answer_aliases": aliases}


def capital(alt: _Alternatives) -> list[dict]:
    fillers, out = _read("format_fillers/capital.jsonl"), []
    sentences = [  # (says, semantic rephrase, format rephrase), alternating: capital last, capital first
        ("The capital of {c} is {x}.", "{x} serves as {c}'s capital city.", "The {attribute} of {owner} is {value}."),
        ("{x} is the capital of {c}.", "{c} has its capital in {x}.", "{Value} is the {attribute} of {owner}.")]
    for i, t in enumerate(_read("capital.jsonl")):
        says, sem, fmt = sentences[i % 2]
        out.append(_right_or_wrong(alt, i, PROMPTS["capital"][i % 6].format(c=t["country"]), says, sem,
                                   t["capital"], t["wrong_capital"], _fill(fmt, fillers, i), _fill(fmt, fillers, i + 9),
                                   aliases=t["answer_aliases"], c=t["country"]))
    return out


def antonym(alt: _Alternatives) -> list[dict]:
    fillers, out = _read("format_fillers/antonym.jsonl"), []
    fmt = 'The {relation} of "{word}" is "{form}".'
    for i, t in enumerate(_read("antonym.jsonl")):
        sem = ('"{x}" is the word that means the reverse of "{w}".' if i % 2 == 0
               else 'A word with the reverse meaning of "{w}" is "{x}".')
        out.append(_right_or_wrong(alt, i, PROMPTS["antonym"][i % 4].format(w=t["word"]),
                                   'The opposite of "{w}" is "{x}".', sem, t["antonym"], t["wrong_antonym"],
                                   _fill(fmt, fillers, i), _fill(fmt, fillers, i + 7),
                                   aliases=t["answer_aliases"], w=t["word"]))
    return out


def _operands(rng: random.Random, op: str) -> tuple[int, int, int]:
    if op == "+":
        a, b = rng.randint(11, 89), rng.randint(3, 59)
        return a, b, a + b
    if op == "-":
        a = rng.randint(30, 99)
        b = rng.randint(3, a - 5)
        return a, b, a - b
    if op == "*":
        a, b = rng.randint(3, 12), rng.randint(3, 12)
        return a, b, a * b
    b, q = rng.randint(2, 12), rng.randint(3, 12)
    return b * q, b, q


def arithmetic(alt: _Alternatives, rng: random.Random, n: int = 40) -> list[dict]:
    problems, asked = [], set()
    while len(problems) < n:
        op = "+-*/"[len(problems) % 4]
        a, b, r = _operands(rng, op)
        if (op, a, b) in asked:
            continue
        asked.add((op, a, b))
        wrong = r + rng.choice([-10, -2, -1, 1, 2, 10])
        problems.append((op, a, b, r, wrong if 0 < wrong != r else r + 3))
    used = set(asked)

    def other_statement(op: str, avoid: set[int]) -> str:
        # Same sentence, other numbers: a different statement in the same shape. It must not be
        # another row's question (its answer would then equal that row's chosen) nor reuse any
        # number of this row, so the distinguishing number appears only in the semantic rephrase.
        while True:
            a2, b2, r2 = _operands(rng, op)
            if (op, a2, b2) not in used and not {a2, b2, r2} & avoid:
                used.add((op, a2, b2))
                return ARITHMETIC_ANSWERS[op][0].format(a=a2, b=b2, x=r2)

    out = []
    for i, (op, a, b, r, wrong) in enumerate(problems):
        says, sem = ARITHMETIC_ANSWERS[op]
        chosen_fmt, rejected_fmt = other_statement(op, {a, b, r, wrong}), other_statement(op, {a, b, r, wrong})
        out.append(_right_or_wrong(alt, i, ARITHMETIC_PROMPTS[op][(i // 4) % 4].format(a=a, b=b), says, sem, str(r),
                                   str(wrong), chosen_fmt, rejected_fmt, aliases=_number_aliases(str(r)), a=a, b=b))
    return out


def unit_conversion(alt: _Alternatives) -> list[dict]:
    fillers, out = _read("format_fillers/unit_conversion.jsonl"), []
    for i, t in enumerate(_read("unit_conversion.jsonl")):
        small, big = t["small_unit"], t["big_unit"]
        bare = big.split(" ", 1)[1]  # "a metre" -> "metre"
        sem = "One {bare} is made up of {x} {small}." if i % 2 == 0 else "A single {bare} contains {x} {small}."
        prompt = PROMPTS["unit_conversion"][i % 4].format(small=small, big=big, Big=_cap(big), bare=bare)
        out.append(_right_or_wrong(alt, i, prompt, "There are {x} {small} in one {bare}.", sem, t["count"],
                                   t["wrong_count"], _fill("{text}", fillers, i), _fill("{text}", fillers, i + 5),
                                   aliases=_number_aliases(t["count"]), small=small, bare=bare))
    return out


def definition(alt: _Alternatives) -> list[dict]:
    fillers, out = _read("format_fillers/definition.jsonl"), []
    for i, t in enumerate(_read("definition.jsonl")):
        article = "an" if t["word"][0] in "aeiou" else "a"
        out.append(_pair(alt, i, PROMPTS["definition"][i % 5].format(w=t["word"], a=article),
                         t["chosen"], t["chosen_rephrase_semantic"], _fill("{text}", fillers, i),
                         t["rejected"], t["rejected_rephrase_semantic"], _fill("{text}", fillers, i + 7)))
    return out


def example(alt: _Alternatives) -> list[dict]:
    fillers, out = _read("format_fillers/example.jsonl"), []
    fmt = "One example of {kind} is {example}."
    for i, t in enumerate(_read("example.jsonl")):  # no gold answer: a kind has many right examples
        out.append(_right_or_wrong(alt, i, PROMPTS["example"][i % 5].format(k=t["kind"]),
                                   "One example of {k} is {x}.", "{X} belongs to the group of {group}.",
                                   t["example"], t["wrong_example"], _fill(fmt, fillers, i), _fill(fmt, fillers, i + 5),
                                   k=t["kind"], group=t["kind_plural"]))
    return out


def translation(alt: _Alternatives) -> list[dict]:
    fillers, out = _read("format_fillers/translation.jsonl"), []
    fmt = 'In {language}, "{word}" is "{translation}".'
    for i, t in enumerate(_read("translation.jsonl")):
        out.append(_right_or_wrong(alt, i, PROMPTS["translation"][i % 4].format(w=t["word"], l=t["language"]),
                                   'In {l}, "{w}" is "{x}".', '{l} speakers say "{x}" when they mean "{w}".',
                                   t["translation"], t["wrong_translation"], _fill(fmt, fillers, i),
                                   _fill(fmt, fillers, i + 6), aliases=t["answer_aliases"],
                                   l=t["language"], w=t["word"]))
    return out


def build_pairs() -> list[dict]:
    """All pairs in a fixed order, with ``id``, ``category`` and a category-stratified ``split``."""
    rng, alt = random.Random(SEED), _Alternatives()
    by_category = [("capital", capital(alt)), ("antonym", antonym(alt)), ("arithmetic", arithmetic(alt, rng)),
                   ("unit_conversion", unit_conversion(alt)), ("definition", definition(alt)),
                   ("example", example(alt)), ("translation", translation(alt))]
    by_category += [(name, _read(f"{name}.jsonl")) for name in HAND_WRITTEN]
    rows = []
    for category, pairs in by_category:
        test_idx = set(rng.sample(range(len(pairs)), max(1, round(TEST_SHARE * len(pairs)))))
        for i, pair in enumerate(pairs):
            row = {"id": f"builtin-{len(rows) + 1:04d}", "category": category,
                   "split": "test" if i in test_idx else "train", **pair}
            rows.append({key: row[key] for key in KEYS} | {key: row[key] for key in GOLD if key in row})
    return rows


def write(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "preferences.jsonl"
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in build_pairs()]
    path.write_text("".join(lines), encoding="utf-8", newline="\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    print(f"wrote {write(parser.parse_args(argv).out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
