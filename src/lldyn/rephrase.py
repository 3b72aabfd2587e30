"""Rephrasers for the four rephrase probe families (paper Sec. 4.1 and Appendix, GPT rephrases).

The paper asks a chat model for two rewrites of each response:

* **semantic** (y_gpts): "use different words as much as possible while keeping the meaning unchanged";
* **format** (y_gptf): "change the meaning as much as possible while keeping the format".

Three rephrasers, chosen with ``--rephraser``:

``rule``          deterministic and offline. Uses the curated rephrases a data row carries (the
                  built-in data set has all four fields); otherwise a rule-based rewrite.
                  *Limits*: the semantic rule only swaps words found in a small synonym table and
                  reorders clauses around a comma — sentences with neither get a fixed lead-in
                  ("Put differently, ..."), so they keep most of their words; the format rule swaps
                  content words (≥ 4 letters, not function words) for other content words of the data
                  set, which changes the meaning but can produce ungrammatical text. Good for tests
                  and for data that ships curated rephrases; use a model for real studies.
``hf:MODEL``      a local Hugging Face chat model (``hf:`` alone = the embedded SmolLM2), greedy.
``openai:MODEL``  any OpenAI-compatible endpoint (``--base-url``); the key is read from the
                  environment variable ``OPENAI_API_KEY`` (or the one named by ``--api-key-env``)
                  and never written anywhere.
"""
from __future__ import annotations

import random
import re
from typing import Any, NamedTuple, Sequence

from lldyn.data import PreferenceExample
from lldyn.endpoint import ChatEndpoint, public_url
from lldyn.errors import LldynError
from lldyn.models import EMBEDDED_ALIAS, ModelConfig, load_model

# The generation engine (torch) is imported inside HFRephraser.rephrase, tqdm only for a progress bar: the
# rule and endpoint rephrasers, and the probe files that import this module, work without loading torch.

INSTRUCTIONS = {
    "semantic": "Rewrite the following response. Use different words as much as possible while keeping the "
                "meaning unchanged.",
    "format": "Rewrite the following response. Change the meaning as much as possible while keeping the format.",
}
REPLY_HINT = "Reply with the rewritten response only."


class RephraseRequest(NamedTuple):
    """Rewrite ``pair.<part>`` (part: chosen | rejected) in ``mode`` (semantic | format)."""

    pair: PreferenceExample
    part: str
    mode: str

    @property
    def text(self) -> str:
        return getattr(self.pair, self.part)

    @property
    def curated_key(self) -> str:
        return f"{self.part}_rephrase_{self.mode}"


def instruction_message(text: str, mode: str) -> str:
    return f"{INSTRUCTIONS[mode]} {REPLY_HINT}\n\nResponse: {text}"


def clean_reply(reply: str) -> str:
    """First non-empty paragraph of a model reply, without a 'Rewritten response:' label or quotes."""
    reply = reply.strip()
    reply = re.sub(r"^(rewritten( response)?|response|answer)\s*:\s*", "", reply, flags=re.I)
    first = next((part.strip() for part in reply.split("\n\n") if part.strip()), "")
    if len(first) >= 2 and first[0] == first[-1] and first[0] in "\"'":
        first = first[1:-1].strip()
    return first


# --------------------------------------------------------------------------- rule-based

SYNONYMS = {
    "big": "large", "large": "big", "small": "little", "little": "small", "quick": "fast", "fast": "quick",
    "begin": "start", "start": "begin", "help": "assist", "assist": "help", "use": "employ", "buy": "purchase",
    "show": "display", "answer": "reply", "reply": "answer", "happy": "glad", "glad": "happy", "sad": "unhappy",
    "hard": "difficult", "difficult": "hard", "easy": "simple", "simple": "easy", "important": "significant",
    "often": "frequently", "frequently": "often", "usually": "typically", "typically": "usually",
    "about": "roughly", "roughly": "about", "maybe": "perhaps", "perhaps": "maybe", "also": "additionally",
    "but": "however", "because": "since", "since": "because", "get": "obtain", "make": "create", "create": "make",
    "need": "require", "require": "need", "try": "attempt", "attempt": "try", "good": "fine", "bad": "poor",
    "many": "numerous", "numerous": "many", "very": "really", "really": "truly", "city": "town",
    "means": "signifies", "called": "named", "named": "called", "example": "instance", "instance": "example",
    "correct": "right", "right": "correct", "wrong": "incorrect", "incorrect": "wrong", "sure": "certain",
    "know": "understand", "think": "believe", "believe": "think", "idea": "notion", "way": "method",
    "method": "way", "people": "folks", "person": "individual", "keep": "retain",
}
FUNCTION_WORDS = set("""a an the and or but if then than that this these those is are was were be been being am
of in on at to for from by with about as into onto over under it its it's they them their there here he she his
her we our you your i me my not no yes do does did so such can could will would should may might must have has
had what which who whom whose when where why how all any some each every very just also only more most less""".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def rule_semantic(text: str) -> tuple[str, str]:
    """Synonym swaps and clause reordering (keeps meaning for the words the table knows)."""
    changed = [False]

    def swap(m: re.Match) -> str:
        word = m.group(0)
        new = SYNONYMS.get(word.lower())
        if new and new != word.lower():
            changed[0] = True
            return _match_case(new, word)
        return word

    out = _WORD.sub(swap, text)
    how = ["synonyms"] if changed[0] else []
    body = out.rstrip(".!?")
    end = out[len(body):]
    if ", " in body:  # "A, B." → "B, a."
        first, _, rest = body.partition(", ")
        out = _match_case(rest, first[:1]) + ", " + (first[:1].lower() + first[1:]) + end
        how.append("clause_reorder")
    if not how:
        acronym = len(text) > 1 and text[1].isupper()
        out = "Put differently, " + (text if acronym else text[:1].lower() + text[1:])
        how.append("lead_in")
    return out, "rule:" + "+".join(how)


def rule_format(text: str, vocabulary: Sequence[str], rng: random.Random) -> tuple[str, str]:
    """Swap every content word for another content word of the data set (same shape, other meaning)."""
    changed = [0]

    def swap(m: re.Match) -> str:
        word = m.group(0)
        if word.lower() in FUNCTION_WORDS or len(word) < 4:
            return word
        pool = [v for v in vocabulary if v != word.lower()]
        if not pool:
            return word
        changed[0] += 1
        return _match_case(rng.choice(pool), word)

    out = _WORD.sub(swap, text)
    if not changed[0]:
        words = text.split()
        out = " ".join(reversed(words)) if len(words) > 1 else text + " " + (rng.choice(vocabulary) if vocabulary else "indeed")
        return out, "rule:word_order"
    return out, "rule:content_swap"


class RuleRephraser:
    """Curated rephrases when the row has them, else :func:`rule_semantic` / :func:`rule_format`."""

    name = "rule"

    def __init__(self, pairs: Sequence[PreferenceExample], seed: int = 0) -> None:
        words = {w.lower() for p in pairs for t in (p.chosen, p.rejected) for w in _WORD.findall(t)}
        self.vocabulary = sorted(w for w in words if w not in FUNCTION_WORDS and len(w) >= 4)
        self.seed = seed

    def rephrase(self, requests: Sequence[RephraseRequest], progress: bool = False) -> list[tuple[str, str]]:
        out = []
        for i, req in enumerate(requests):
            curated = req.pair.extra.get(req.curated_key)
            if isinstance(curated, str) and curated.strip():
                out.append((curated, "curated"))
            elif req.mode == "semantic":
                out.append(rule_semantic(req.text))
            else:
                out.append(rule_format(req.text, self.vocabulary, random.Random(f"{self.seed}:{req.pair.id}:{req.part}")))
        return out


# --------------------------------------------------------------------------- model-based


class HFRephraser:
    """A local chat model rewrites each response, greedy, with the paper's instructions."""

    def __init__(self, model_name: str, max_new_tokens: int = 96, batch_size: int = 8) -> None:
        self.model_name = model_name or EMBEDDED_ALIAS
        self.name = f"hf:{self.model_name}"
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def rephrase(self, requests: Sequence[RephraseRequest], progress: bool = False) -> list[tuple[str, str]]:
        from lldyn.generation import GenerationConfig, generate

        lm = load_model(ModelConfig(name=self.model_name))
        prompts = [instruction_message(r.text, r.mode) for r in requests]
        replies = generate(lm.model, lm.tokenizer, prompts,
                           GenerationConfig(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size),
                           progress=progress)
        out = []
        for req, reply in zip(requests, replies):
            text = clean_reply(reply)
            if not text:
                raise LldynError(f"the rephrasing model returned an empty rewrite for {req.pair.id} ({req.part}, "
                                 f"{req.mode})", field="rephraser", expected="another --rephraser model, or rule")
            out.append((text, self.name))
        return out


class OpenAIRephraser:
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint (urllib; temperature 0).

    The API key comes only from the environment (``api_key_env``) and is sent in the Authorization
    header; it is never logged or written to the probe file.
    """

    def __init__(self, model: str, base_url: str | None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_tokens: int = 200) -> None:
        self.endpoint = ChatEndpoint(model, base_url, api_key_env, max_tokens, timeout, what="rephrase",
                                     flag="rephraser")
        self.name = f"openai:{model}"
        self.url = self.endpoint.url

    def complete(self, message: str) -> str:
        return self.endpoint.complete([{"role": "user", "content": message}])

    def rephrase(self, requests: Sequence[RephraseRequest], progress: bool = False) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if not requests:
            return out
        # The first request goes out before any progress bar is drawn: an unreachable endpoint or a
        # wrong key then fails with nothing on the terminal but the one error line.
        out.append(self._rewrite(requests[0]))
        rest: Any = requests[1:]
        if progress:
            from tqdm.auto import tqdm

            rest = tqdm(rest, desc="rephrasing", unit="resp", initial=1, total=len(requests))
        for req in rest:
            out.append(self._rewrite(req))
        return out

    def _rewrite(self, req: RephraseRequest) -> tuple[str, str]:
        text = clean_reply(self.complete(instruction_message(req.text, req.mode)))
        if not text:
            raise LldynError(f"empty rewrite for {req.pair.id} ({req.part}, {req.mode})", file=public_url(self.url),
                             field="rephraser")
        return text, self.name


def make_rephraser(spec: str, pairs: Sequence[PreferenceExample], seed: int = 0, base_url: str | None = None,
                   api_key_env: str = "OPENAI_API_KEY"):
    """``rule`` | ``hf[:MODEL]`` | ``openai:MODEL`` → a rephraser."""
    if spec == "rule":
        return RuleRephraser(pairs, seed)
    kind, _, model = spec.partition(":")
    if kind == "hf":
        return HFRephraser(model)
    if kind == "openai":
        return OpenAIRephraser(model, base_url, api_key_env)
    raise LldynError(f"unknown rephraser {spec!r}", field="rephraser", expected="rule, hf:MODEL or openai:MODEL")
