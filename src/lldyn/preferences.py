"""Preference sources: who says which of two responses to a prompt is better, and the verdict parser.

A *preference source* says which of two responses to a prompt is better. Four kinds, named by a spec
(:func:`load_preference_source`):

``hf:MODEL``        a local chat model judges (``hf:`` alone = the embedded SmolLM2-135M-Instruct), greedy;
``openai:MODEL``    any OpenAI-compatible ``/v1/chat/completions`` endpoint (``base_url``; ``lldyn serve``
                    is one). The API key is read from the environment variable ``api_key_env`` only and
                    sent as ``Authorization: Bearer``; it is never written to a file, a log or a message;
``reward:module:function``
                    a reward function or reward model ``f(prompt: str, response: str) -> float``; the
                    higher reward wins, equal rewards tie (chat prompts are passed as their rendered
                    history, see :func:`render_history`). ``module:function`` alone is the same source,
                    kept for specs written before ``reward:`` existed; a module named ``hf``, ``openai``
                    or ``reward`` needs the explicit spelling (``reward:reward:f``);
``reference``       a judge with ground truth (:class:`ReferenceSource`): the response that states the
                    prompt's gold answer (:mod:`lldyn.reference_answer`) wins when the other does not;
                    both or neither is a tie. It needs the prompts' gold answers (``references``).

Every source has ``judge(prompt, a, b) -> Judgement(choice, raw_text)``, ``prefer(prompt, a, b) -> 0 | 1 |
None`` (0 = a, 1 = b, None = invalid or tie) and ``judge_batch(items)``. Model judges get the paper's
instruction (:data:`JUDGE_TEMPLATE`: which response is more helpful, a one-sentence comparison, then
"A" or "B") and their answer goes through :func:`parse_judgement`, which never raises: an answer it
cannot read is *invalid* (None).

The judged win rate built on these sources is :mod:`lldyn.judge`.
"""
from __future__ import annotations

import json
import math
import re
import socket
import urllib.parse
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from lldyn.data import Prompt
from lldyn.endpoint import ChatEndpoint, public_url
from lldyn.errors import LldynError
from lldyn.reference_answer import Match, Reference, ReferenceJudge
from lldyn.rewards import import_function
from lldyn.runs import load_model_or_run

# The paper's judge instruction (Ren & Sutherland, Appendix; the authors' evaluation notebook, which
# follows the DPO paper's HH prompt): which response is more helpful, a one-sentence comparison, then
# "A" or "B" on a new line.
JUDGE_TEMPLATE = (
    "Given the history of multi-round chat, which response is more helpful?\n\n"
    "History:\n{history}\n\n"
    "Response A: {response_a}\n\n"
    "Response B: {response_b}\n\n"
    "FIRST provide a one-sentence comparison of the two responses and explain which you feel is more helpful. "
    "SECOND, on a new line, state only \"A\" or \"B\" to indicate which response is more helpful. "
    "Your response should use the format:\n\n"
    "Comparison: <one-sentence comparison and explanation>\n"
    "More helpful: <\"A\" or \"B\">"
)
JUDGE_SYSTEM = "You are a helpful assistant."
SPEC_HELP = ("hf:MODEL (local chat model; hf: = embedded SmolLM2), openai:MODEL (OpenAI-compatible endpoint), "
             "reward:module:function (a reward function) or reference (gold answers)")
_ROLE_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System"}


class Judgement(NamedTuple):
    """One judgement: ``choice`` 0 = the first response shown (A), 1 = the second (B), None = invalid/tie."""

    choice: int | None
    raw_text: str


def render_history(prompt: Prompt) -> str:
    """A prompt as the judge reads it: text as is; chat messages as ``Human: ...`` / ``Assistant: ...`` turns."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{_ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content']}" for m in prompt)


def judge_message(prompt: Prompt, response_a: str, response_b: str) -> str:
    """The user message sent to a model judge (:data:`JUDGE_TEMPLATE` filled in)."""
    return JUDGE_TEMPLATE.format(history=render_history(prompt), response_a=response_a.strip(),
                                 response_b=response_b.strip())


# --------------------------------------------------------------------------- reading the judge's answer

# Labels a judge puts before its verdict: the paper's "More helpful:" anywhere in a line (but not "B is
# more helpful: ..." inside a sentence), and the usual variants at the start of a line.
_VERDICT_LABEL = re.compile(r"(?<!\bis\s)(?<!\bare\s)\bmore\s+helpful(?:\s+response)?\s*(?:is\s*)?[*_]*\s*[:：=]",
                            re.IGNORECASE)
_LINE_LABEL = re.compile(r"^[\s*_#>\-]*(?:final\s+answer|answer|verdict|winner|preferred|preference|choice|"
                         r"better\s+response|decision)\s*(?:is\s*)?[*_]*\s*[:：=]", re.IGNORECASE)
_MARKUP = re.compile(r"[*_`\"'“”‘’\[\]()<>{}]")
_LEADING_WORD = re.compile(r"^(?:(?:the\s+)?(?:response|assistant|answer|option|output)\s*)", re.IGNORECASE)
_LETTER = re.compile(r"^([AB])(?![A-Za-z0-9])(.*)$", re.IGNORECASE | re.DOTALL)
_SECOND_LETTER = re.compile(r"^\s*(?:or|and|/|&|,|vs\.?|versus)\s*(?:response\s+)?[AB](?![A-Za-z0-9])", re.IGNORECASE)
_SENTENCE = re.compile(r"\b(?:response|assistant)\s+([AB])\s+is\s+(?:(?:much|slightly|clearly|far)\s+)?"
                       r"(?:more\s+helpful|better)\b", re.IGNORECASE)
_DOUBLE_BRACKET = re.compile(r"\[\[\s*([AB])\s*\]\]")
# 'The answer to the question "Which response is more helpful?" is "A".' (SmolLM2-135M answers like this)
_IS_LETTER = re.compile(r"more\s+helpful\W{0,3}\s+is\s*:?\s*[\"“'\[]?([AB])[\"”'\]]?\s*[.!]?\s*$",
                        re.IGNORECASE | re.MULTILINE)


def _letter(segment: str) -> int | None:
    """``'A'``/``'"B".'``/``'Response A'``/``'[A] because ...'`` → 0/1; anything ambiguous → None."""
    text = _LEADING_WORD.sub("", _MARKUP.sub(" ", segment).strip()).strip()
    m = _LETTER.match(text)
    if not m:
        return None
    letter, rest = m.group(1), m.group(2)
    if _SECOND_LETTER.match(rest):
        return None  # "A or B", "A and B": the template echoed, or no decision
    if letter == "a" and re.match(r"^\s+[a-z]", rest) and not re.match(r"^\s+(?:is|because|since|as)\b", rest):
        return None  # the article "a", as in "More helpful: a response that ..."
    return 0 if letter.upper() == "A" else 1


def parse_judgement(text: str | None) -> int | None:
    """The judge's verdict in ``text``: 0 (A), 1 (B) or None (malformed, tie, contradictory). Never raises.

    Read in order: the labelled verdict lines (``More helpful: A``, ``**Verdict:** [B]``, ...; all of
    them must agree); else a last line that is only a letter (``B``, ``"A".``, ``Response B``); else
    ``[[A]]`` marks; else sentences ``Response X is more helpful/better`` (all must agree); else a line
    ending ``... more helpful?" is "X".``.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    labelled = []
    lines = [line for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        matches = list(_VERDICT_LABEL.finditer(line)) or list(_LINE_LABEL.finditer(line))
        if matches:
            segment = line[matches[-1].end():]
            if not _MARKUP.sub(" ", segment).strip() and i + 1 < len(lines):
                segment = lines[i + 1]  # "More helpful:" with the letter on the next line
            labelled.append(_letter(segment))
    decided = {c for c in labelled if c is not None}
    if len(decided) == 1:
        return decided.pop()
    if len(decided) > 1:
        return None  # contradictory verdict lines
    if labelled:
        return None  # a verdict line with no readable letter ("More helpful: tie", the template echoed)
    last = _MARKUP.sub(" ", lines[-1]).strip().rstrip(".!").strip()
    last = _LEADING_WORD.sub("", last).strip()
    if re.fullmatch(r"[AB]", last):
        return 0 if last == "A" else 1
    for pattern in (_DOUBLE_BRACKET, _SENTENCE, _IS_LETTER):
        found = {m.group(1).upper() for m in pattern.finditer(text)}
        if len(found) == 1:
            return 0 if found.pop() == "A" else 1
        if len(found) > 1:
            return None
    return None


# --------------------------------------------------------------------------- preference sources


class PreferenceSource:
    """Shared face of every source: subclasses implement :meth:`judge_batch`."""

    name: str = "source"

    def judge_batch(self, items: Sequence[tuple[Prompt, str, str]], progress: bool = False) -> list[Judgement]:
        """One :class:`Judgement` per ``(prompt, response_a, response_b)``, in order."""
        raise NotImplementedError

    def judge(self, prompt: Prompt, response_a: str, response_b: str) -> Judgement:
        return self.judge_batch([(prompt, response_a, response_b)])[0]

    def prefer(self, prompt: Prompt, response_a: str, response_b: str) -> int | None:
        """0 = ``response_a`` is better, 1 = ``response_b``, None = invalid or tie."""
        return self.judge(prompt, response_a, response_b).choice

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings for output files (never a secret)."""
        return {"judge": self.name}


def _judge_messages(prompt: Prompt, response_a: str, response_b: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": judge_message(prompt, response_a, response_b)}]


JUDGE_MODES = ("generate", "logprob")
# The forced choice of a log-prob judge: its answer, after the instruction, as the verdict line alone.
VERDICTS = ("More helpful: A", "More helpful: B")


class HFJudge(PreferenceSource):
    """A local chat model judges with the paper's instruction.

    ``mode="generate"`` (default): it answers greedily (``lldyn.generation.generate``) and the answer is
    parsed (:func:`parse_judgement`). ``mode="logprob"``: a forced choice for judges too small to follow the
    answer format — the one engine scores the two verdict lines :data:`VERDICTS` as the judge's reply and
    the likelier one wins (equal: a tie); the raw text records both log-probabilities. It skips the
    comparison sentence the instruction asks for, so it measures the judge's preference, not its reasoning.
    """

    def __init__(self, model_name: str, max_new_tokens: int = 128, batch_size: int = 4,
                 trust_remote_code: bool = False, mode: str = "generate") -> None:
        from lldyn.models import EMBEDDED_ALIAS

        if mode not in JUDGE_MODES:
            raise LldynError(f"unknown judge mode {mode!r}", field="judge-mode", expected=" or ".join(JUDGE_MODES))
        self.model_name = model_name or EMBEDDED_ALIAS
        self.name = f"hf:{self.model_name}"
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.mode = mode
        self.lm = load_model_or_run(self.model_name, trust_remote_code)

    def judge_batch(self, items: Sequence[tuple[Prompt, str, str]], progress: bool = False) -> list[Judgement]:
        if self.mode == "logprob":
            return self._forced_choice(items, progress)
        from lldyn.generation import GenerationConfig, generate

        positions = getattr(self.lm.model.config, "max_position_embeddings", None) or 4096
        # Long histories lose their start (left truncation); the instruction's end, the answer format, stays.
        cfg = GenerationConfig(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                               max_prompt_tokens=max(16, positions - self.max_new_tokens))
        replies = generate(self.lm.model, self.lm.tokenizer, [_judge_messages(*item) for item in items], cfg,
                           progress=progress)
        return [Judgement(parse_judgement(r), r) for r in replies]

    def _forced_choice(self, items: Sequence[tuple[Prompt, str, str]], progress: bool) -> list[Judgement]:
        from lldyn.scoring import ScoreConfig, ScoreRequest, score

        positions = getattr(self.lm.model.config, "max_position_embeddings", None) or 4096
        # Long histories lose their start (prompts keep their end): the instruction and the format stay.
        cfg = ScoreConfig(max_length=positions, max_prompt_tokens=positions - 16)
        requests = [ScoreRequest(_judge_messages(*item), verdict) for item in items for verdict in VERDICTS]
        res = score(self.lm.model, self.lm.tokenizer, requests, cfg, progress=progress)
        out = []
        for i in range(len(items)):
            la, lb = res[2 * i].logp, res[2 * i + 1].logp
            choice = None if la == lb else (0 if la > lb else 1)
            out.append(Judgement(choice, f"forced choice: log π({VERDICTS[0]!r}) = {la:.4f}, "
                                         f"log π({VERDICTS[1]!r}) = {lb:.4f}"))
        return out

    def describe(self) -> dict[str, Any]:
        if self.mode == "logprob":
            return {"judge": self.name, "judge_mode": "logprob", "verdicts": list(VERDICTS)}
        return {"judge": self.name, "judge_mode": "generate", "judge_max_tokens": self.max_new_tokens}


class OpenAIJudge(PreferenceSource):
    """Any OpenAI-compatible chat-completions endpoint, through the standard library (temperature 0).

    The key comes only from ``os.environ[api_key_env]`` at request time; it is sent in the
    Authorization header and appears in no attribute, message or file.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 max_tokens: int = 128, timeout: float = 120.0) -> None:
        self.endpoint = ChatEndpoint(model, base_url, api_key_env, max_tokens, timeout, what="judge", flag="judge")
        self.name = f"openai:{model}"
        self.url = self.endpoint.url

    def describe(self) -> dict[str, Any]:
        return {"judge": self.name, "base_url": public_url(self.url), "api_key_env": self.endpoint.api_key_env,
                "judge_max_tokens": self.endpoint.max_tokens}

    def ping(self, timeout: float = 10.0) -> None:
        """Fail early, before any model is loaded, when nothing listens at the endpoint's host and port."""
        parts = urllib.parse.urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
        except OSError as err:
            raise LldynError(f"cannot reach judge endpoint: {err.strerror or err}", file=public_url(self.url),
                             field="base-url", expected="a running OpenAI-compatible server (--base-url)") from None

    def judge_batch(self, items: Sequence[tuple[Prompt, str, str]], progress: bool = False) -> list[Judgement]:
        loop: Any = items
        if progress:
            from tqdm.auto import tqdm

            loop = tqdm(items, desc="judging", unit="pair")
        out = []
        for item in loop:
            reply = self.endpoint.complete(_judge_messages(*item))
            out.append(Judgement(parse_judgement(reply), reply))
        return out


class RewardFunctionSource(PreferenceSource):
    """``reward:module:function`` — ``f(prompt: str, response: str) -> float``; the higher reward wins, equal = tie.

    A reward that raises, or returns something that is not a number (text, a bool, NaN, a tensor of more
    than one value), is one :class:`LldynError` naming the function; ``±inf`` are numbers and compare."""

    def __init__(self, module: str, function: str) -> None:
        self.name = f"reward:{module}:{function}"
        fn = import_function(module, function, field="judge", signature="f(prompt, response) -> float")
        self.fn: Callable[[str, str], Any] = fn

    def reward(self, prompt: Prompt, response: str) -> float:
        try:
            value = self.fn(render_history(prompt), response)
        except Exception as err:  # the user's function failed: one line naming it, not a traceback
            raise LldynError(f"reward function raised {type(err).__name__}: {err}", field="judge",
                             file=self.name) from None
        number = None
        if not isinstance(value, bool) and hasattr(value, "__float__"):
            try:
                number = float(value)
            except (TypeError, ValueError, RuntimeError):  # e.g. a tensor of several values
                number = None
        if number is None or math.isnan(number):
            shown = "nan" if number is not None else type(value).__name__
            raise LldynError(f"reward function returned {shown}", field="judge", file=self.name,
                             expected="a number (float or int, not NaN)")
        return number

    def judge_batch(self, items: Sequence[tuple[Prompt, str, str]], progress: bool = False) -> list[Judgement]:
        out = []
        for prompt, a, b in items:
            ra, rb = self.reward(prompt, a), self.reward(prompt, b)
            choice = None if ra == rb else (0 if ra > rb else 1)
            out.append(Judgement(choice, f"reward A={ra!r} B={rb!r}"))
        return out


def _match_text(match: Match) -> str:
    """``stated ('Paris' at 23)`` / ``not mentioned`` / ``only negated`` ...: one response's match in words."""
    if match.matched:
        return f"{match.reason} ({match.alias!r} at {match.start})"
    return match.reason


class ReferenceSource(PreferenceSource):
    """``reference`` — a judge with ground truth (:mod:`lldyn.reference_answer`): A wins when it states the
    prompt's gold answer and B does not, B in the reverse case, and both or neither is a tie (None).

    Each response is matched on its own, so the verdict is symmetric: both orders always agree, and the
    win rate has no position bias to cancel. Mentions of the answer that the prompt already makes do not
    count (``Divide 64 by 8.``: ``Dividing 64 by 8 gives 9.`` does not state 8). ``references`` gives
    each prompt's :class:`~lldyn.reference_answer.Reference`: a function of the prompt, or a mapping
    keyed by :func:`prompt_key`; a prompt without one is an :class:`LldynError`, never a silent tie.
    The raw text of a judgement says why, e.g. ``gold 'Paris': A stated ('Paris' at 23), B not mentioned``.
    """

    name = "reference"

    def __init__(self, references: Mapping[str, Reference] | Callable[[Prompt], Reference | None]) -> None:
        if callable(references):
            self.judge_ = ReferenceJudge(references)
        else:
            table = dict(references)
            self.judge_ = ReferenceJudge(lambda prompt: table.get(prompt_key(prompt)))

    def states(self, prompt: Prompt, response: str) -> Match:
        """Whether ``response`` states ``prompt``'s gold answer (beyond the prompt's own mentions)."""
        return self.judge_.states(prompt, response)

    def judge_batch(self, items: Sequence[tuple[Prompt, str, str]], progress: bool = False) -> list[Judgement]:
        out = []
        for prompt, a, b in items:
            ref = self.judge_.reference(prompt)
            ma, mb = self.judge_.explain(prompt, a, b)
            choice = None if ma.matched == mb.matched else (0 if ma.matched else 1)
            out.append(Judgement(choice, f"gold {ref.answer!r}: A {_match_text(ma)}, B {_match_text(mb)}"))
        return out

    def describe(self) -> dict[str, Any]:
        return {"judge": self.name, "matcher": "lldyn.reference_answer.states_answer",
                "prompt_mentions": "a response's first k mentions of the answer, k = the prompt's, do not count"}


def prompt_key(prompt: Prompt) -> str:
    """A prompt as a lookup key: its text, or its chat messages as canonical JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _is_function_spec(spec: str) -> bool:
    module, sep, function = spec.partition(":")
    return bool(sep) and function.isidentifier() and bool(module) and all(p.isidentifier() for p in module.split("."))


def load_preference_source(spec: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", *,
                           max_tokens: int = 128, trust_remote_code: bool = False, judge_mode: str = "generate",
                           references: Mapping[str, Reference] | Callable[[Prompt], Reference | None] | None = None
                           ) -> PreferenceSource:
    """``hf:MODEL`` | ``openai:MODEL`` | ``reward:module:function`` (or ``module:function``) | ``reference`` →
    a :class:`PreferenceSource` (see module doc).

    ``max_tokens`` bounds a model judge's answer (the comparison sentence and the verdict);
    ``trust_remote_code`` is passed to a local judge model's loader; ``judge_mode`` (``generate`` or
    ``logprob``, local judges only) see :class:`HFJudge`; ``references``: the gold answers that
    ``reference`` needs (see :class:`ReferenceSource`; ``lldyn.judge.reference_table`` makes them from
    prompts).
    """
    spec = (spec or "").strip()
    kind, _, rest = spec.partition(":")
    if judge_mode != "generate" and kind != "hf" and spec != "hf":
        raise LldynError(f"judge mode {judge_mode!r} needs a local judge", field="judge-mode",
                         expected="--judge hf:MODEL, or --judge-mode generate")
    if spec == "hf" or kind == "hf":
        return HFJudge(rest, max_new_tokens=max_tokens, trust_remote_code=trust_remote_code, mode=judge_mode)
    if kind == "openai":
        return OpenAIJudge(rest, base_url, api_key_env, max_tokens=max_tokens)
    if spec == "reference":
        if references is None:
            raise LldynError("the reference judge needs the prompts' gold answers", field="judge",
                             expected="lldyn judge --judge reference with prompts that carry 'answer' fields")
        return ReferenceSource(references)
    if kind == "reward":
        if not _is_function_spec(rest):
            raise LldynError(f"{spec!r} names no reward function", field="judge",
                             expected="reward:module:function, e.g. reward:my_rewards:helpfulness")
        return RewardFunctionSource(*rest.split(":"))
    if _is_function_spec(spec):
        return RewardFunctionSource(kind, rest)
    raise LldynError(f"unknown judge {spec!r}", field="judge", expected=SPEC_HELP)


