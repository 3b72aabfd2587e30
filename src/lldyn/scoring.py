"""The one log-prob engine: the only code in lldyn that turns (prompt, response) text into log π.

Training, probes, tracking, the decomposition, the squeeze risk and the judge all call it.

Conventions (as the DPO reference implementation's ``_get_batch_logps``):

* the prompt and the response are tokenised **separately** and concatenated; the prompt goes through
  ``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` (or is used verbatim with
  ``template=False``, the raw mode), the response is tokenised without special tokens and **EOS is
  appended**;
* log π(y|x) = Σ_t log π(y_t | x, y_<t) over the response tokens, EOS included (prompt masked);
* y* is the teacher-forced argmax response: y*_t = argmax_v π(v | x, y_<t) along the reference
  response y, and log π(y*) = Σ_t max_v log π(v | x, y_<t) (paper Sec. 4, "y*").

Two entry points share the same encoding and the same chunked head:

* :func:`sequence_logps` — differentiable, full sequences (training, forward-mode decomposition);
* :func:`score` — no grad, for many responses: length-bucketed batches, and the prompt's forward
  pass is shared by all responses of that prompt through the key/value cache (a probe set scores
  ~13 responses per prompt); with ``ScoreConfig(packing=True)`` the same work runs without padding, each
  prompt and its responses laid out in one packed row under a 4D mask (:func:`pack_rows`, :func:`packed_logps`).

Neither ever materialises a batch × length × vocab float32 tensor: hidden states of the response
positions only go through the output layer, ``chunk_size`` positions at a time. Results do not depend
on batch size or padding side (explicit position ids; tested to 1e-5).

Truncation policy (counted, never silent): with ``max_prompt_tokens`` set, prompts keep their last
``max_prompt_tokens`` tokens (the latest turn matters most); a prompt that is still longer than
``max_length`` is an error naming the example; responses keep their first ``max_length − len(prompt)``
tokens, so a cut response loses its EOS. :class:`EncodedPair` records how many tokens were cut.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import torch

from lldyn.config import check
from lldyn.data import Prompt
from lldyn.errors import LldynError, Where


@dataclass(frozen=True)
class ScoreConfig:
    """How text is tokenised and scored.

    template: apply the tokenizer's chat template to prompts (False = raw text mode).
    system_prompt: a system message to put first (None = the template's default).
    max_length / max_prompt_tokens: see the truncation policy in the module docstring.
    batch_tokens: padded-token budget of one forward pass (length bucketing fills batches up to it).
    max_batch: most sequences in one forward pass.
    prefix_sharing: share a prompt's forward pass across its responses (key/value cache).
    chunk_size: response positions sent through the output layer at once (memory ≈ chunk × vocab × 4 B).
    packing: no padding at all: each prompt and its responses are laid out in one row (the prompt once, each
        response after it with its own position ids and a mask that lets it see the prompt and itself only),
        several such groups per row up to ``pack_length`` tokens (see :func:`pack_rows`). Used for models whose
        decoder takes a 4D mask (:func:`can_pack`); others fall back to prefix sharing.
    pack_length: tokens of one packed row (a group longer than this gets a row of its own length).
    """

    template: bool = True
    system_prompt: str | None = None
    max_length: int = 1024
    max_prompt_tokens: int | None = None
    batch_tokens: int = 4096
    max_batch: int = 32
    prefix_sharing: bool = True
    chunk_size: int = 512
    packing: bool = False
    pack_length: int = 1024

    def __post_init__(self) -> None:
        check(self.max_length > 1, "max_length", f"must be > 1, got {self.max_length}", "an integer > 1")
        check(self.max_prompt_tokens is None or 0 < self.max_prompt_tokens < self.max_length, "max_prompt_tokens",
              f"must be in (0, max_length), got {self.max_prompt_tokens}", "an integer below max_length")
        for name in ("batch_tokens", "max_batch", "chunk_size", "pack_length"):
            check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}", "a positive integer")


# --------------------------------------------------------------------------- encoding


class EncodedPair(NamedTuple):
    """Token ids of one (prompt, response); ``*_cut`` count tokens removed by truncation."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    prompt_cut: int = 0
    response_cut: int = 0

    @property
    def truncated(self) -> bool:
        return self.prompt_cut > 0 or self.response_cut > 0


def render_raw_prompt(prompt: Prompt) -> str:
    """Raw-text mode for chat prompts: the HH-RLHF style ``\\n\\nHuman: ...\\n\\nAssistant:``."""
    if isinstance(prompt, str):
        return prompt
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "".join(f"\n\n{names.get(m['role'], m['role'].title())}: {m['content']}" for m in prompt) + "\n\nAssistant:"


def encode_prompt(tokenizer: Any, prompt: Prompt, config: ScoreConfig, where: Where | None = None) -> list[int]:
    """Prompt → token ids, through the chat template (``config.template``) or verbatim.

    A conversation the model's template refuses (two user turns in a row, a system turn it does not
    allow, ...) is one clear error naming the row, not a traceback from inside the template engine.
    """
    if not config.template:
        return list(tokenizer(render_raw_prompt(prompt), add_special_tokens=True)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise LldynError("the tokenizer has no chat template", field="template",
                         expected="--raw (score raw text) or a chat model")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if config.system_prompt is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": config.system_prompt}] + messages
    from jinja2 import TemplateError

    try:
        out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    except TemplateError as err:
        raise (where or Where()).error(f"the model's chat template refused this conversation: {err}", field="prompt",
                                       expected="a conversation the template accepts (e.g. alternating user/"
                                                "assistant turns), or --raw to score text without the template"
                                       ) from None
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def encode_response(tokenizer: Any, response: str) -> list[int]:
    """Response → token ids without special tokens, EOS appended."""
    return list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def truncate_pair(prompt_ids: Sequence[int], response_ids: Sequence[int], config: ScoreConfig,
                  where: Where | None = None) -> EncodedPair:
    """Apply the truncation policy (module docstring) to already-encoded ids."""
    prompt_cut = 0
    if config.max_prompt_tokens is not None and len(prompt_ids) > config.max_prompt_tokens:
        prompt_cut = len(prompt_ids) - config.max_prompt_tokens
        prompt_ids = prompt_ids[prompt_cut:]
    if len(prompt_ids) >= config.max_length:
        raise (where or Where()).error(
            f"prompt alone has {len(prompt_ids)} tokens, max_length is {config.max_length}", field="prompt",
            expected="a shorter prompt, a larger max_length, or max_prompt_tokens to cut prompts")
    room = config.max_length - len(prompt_ids)
    response_cut = max(0, len(response_ids) - room)
    return EncodedPair(tuple(prompt_ids), tuple(response_ids[:room]), prompt_cut, response_cut)


class Encoder:
    """Tokenises prompts and responses with a cache keyed by text (a prompt is scored with many responses)."""

    def __init__(self, tokenizer: Any, config: ScoreConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self._prompts: dict[str, list[int]] = {}

    def prompt(self, prompt: Prompt, where: Where | None = None) -> list[int]:
        key = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
        if key not in self._prompts:
            self._prompts[key] = encode_prompt(self.tokenizer, prompt, self.config, where)
        return self._prompts[key]

    def pair(self, prompt: Prompt, response: str, where: Where | None = None) -> EncodedPair:
        return truncate_pair(self.prompt(prompt, where), encode_response(self.tokenizer, response), self.config,
                             where)


# --------------------------------------------------------------------------- the chunked head


@dataclass
class TokenStats:
    """Per-token quantities of B responses padded to T positions.

    token_logps: (B, T) log π(y_t | x, y_<t), 0 at padding.
    mask: (B, T) bool, True at real response tokens.
    top1_logps: (B, T) max_v log π(v | x, y_<t) (the y* token's log-prob) or None.
    argmax_ids: (B, T) the y* tokens or None.
    entropies: (B, T) entropy of π(· | x, y_<t) in nats or None.
    """

    token_logps: torch.Tensor
    mask: torch.Tensor
    top1_logps: torch.Tensor | None = None
    argmax_ids: torch.Tensor | None = None
    entropies: torch.Tensor | None = None

    @property
    def logps(self) -> torch.Tensor:
        """(B,) Σ_t log π(y_t | x, y_<t)."""
        return self.token_logps.sum(-1)

    @property
    def n_tokens(self) -> torch.Tensor:
        """(B,) number of response tokens (EOS included)."""
        return self.mask.sum(-1)


def output_head(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden (N, H) → logits (N, V), including a model's final logit soft-capping if it has one."""
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if not softcap:
        return head
    return lambda h: torch.tanh(head(h) / softcap) * softcap


def _chunk_logps(head: Callable, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = head(h).float()
    return logits.gather(-1, y[:, None]).squeeze(-1) - logits.logsumexp(-1)


def token_stats(head: Callable, hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                with_stats: bool = False, chunk_size: int = 512, checkpoint: bool = False) -> TokenStats:
    """Log-probs (and optionally top-1, argmax, entropy) of ``targets`` from aligned hidden states.

    Args:
        head: hidden → logits (see :func:`output_head`).
        hidden: (B, T, H) the hidden state that predicts ``targets[b, t]``.
        targets: (B, T) response token ids.
        mask: (B, T) bool, True at real tokens.
        with_stats: also compute top-1 log-prob, argmax and entropy (detached).
        chunk_size: positions per pass through the head; only (chunk, V) logits exist at a time.
        checkpoint: recompute each chunk's logits in backward instead of keeping them (training).
    """
    B, T, H = hidden.shape
    flat = mask.reshape(-1).nonzero().squeeze(-1)  # (N,) positions of real tokens in B*T
    h_all = hidden.reshape(B * T, H).index_select(0, flat)
    y_all = targets.reshape(-1).index_select(0, flat)
    pieces, top1, argmax, entropy = [], [], [], []
    for start in range(0, flat.numel(), chunk_size):
        h, y = h_all[start:start + chunk_size], y_all[start:start + chunk_size]
        if with_stats:
            logits = head(h).float()
            with torch.no_grad():  # one exp pass gives the normaliser, top-1 and entropy together
                best, best_id = logits.max(-1)
                e = torch.exp(logits - best[:, None])
                z = e.sum(-1)
                lse = best + torch.log(z)
                top1.append(best - lse)
                argmax.append(best_id)
                entropy.append(lse - (e * logits).sum(-1) / z)
            if torch.is_grad_enabled():
                pieces.append(logits.gather(-1, y[:, None]).squeeze(-1) - logits.logsumexp(-1))
            else:
                pieces.append(logits.gather(-1, y[:, None]).squeeze(-1) - lse)
        elif checkpoint and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint as ckpt

            pieces.append(ckpt(_chunk_logps, head, h, y, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(head, h, y))
    vals = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)

    def scatter(v: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        base = torch.full((B * T,), fill, dtype=v.dtype, device=v.device)
        return base.index_put((flat,), v).reshape(B, T)

    stats = TokenStats(token_logps=scatter(vals), mask=mask)
    if with_stats and pieces:
        stats.top1_logps = scatter(torch.cat(top1))
        stats.argmax_ids = scatter(torch.cat(argmax))
        stats.entropies = scatter(torch.cat(entropy))
    elif with_stats:
        stats.top1_logps = torch.zeros(B, T)
        stats.argmax_ids = torch.zeros(B, T, dtype=torch.long)
        stats.entropies = torch.zeros(B, T)
    return stats


# --------------------------------------------------------------------------- full sequences (differentiable)


@dataclass
class TokenBatch:
    """B (prompt, response) sequences padded to length L.

    input_ids, attention_mask, position_ids: (B, L).
    response_start: (B,) index of each response's first token; response_len: (B,) its length.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_start: torch.Tensor
    response_len: torch.Tensor

    def to(self, device: Any) -> "TokenBatch":
        return TokenBatch(*(getattr(self, f).to(device) for f in
                            ("input_ids", "attention_mask", "position_ids", "response_start", "response_len")))

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def collate(pairs: Sequence[EncodedPair], pad_id: int, padding_side: str = "right") -> TokenBatch:
    """Pad encoded pairs into a :class:`TokenBatch` (either side; position ids skip the padding)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    L = max(len(p.prompt_ids) + len(p.response_ids) for p in pairs)
    ids = torch.full((len(pairs), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(pairs), L), dtype=torch.long)
    start = torch.zeros(len(pairs), dtype=torch.long)
    for i, p in enumerate(pairs):
        seq = list(p.prompt_ids) + list(p.response_ids)
        offset = 0 if padding_side == "right" else L - len(seq)
        ids[i, offset:offset + len(seq)] = torch.tensor(seq)
        att[i, offset:offset + len(seq)] = 1
        start[i] = offset + len(p.prompt_ids)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    length = torch.tensor([len(p.response_ids) for p in pairs], dtype=torch.long)
    return TokenBatch(ids, att, pos, start, length)


class ResponseHidden(NamedTuple):
    """The hidden states the output layer turns into the responses' next-token distributions.

    hidden: (B, T, H) the final hidden state (after the last norm) that predicts ``targets[b, t]``.
    targets: (B, T) response token ids (EOS included); mask: (B, T) bool, True at real tokens.
    """

    hidden: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


def response_hidden(model: Any, batch: TokenBatch) -> ResponseHidden:
    """One forward pass of the decoder over ``batch``, aligned to the response tokens (differentiable).

    Row t of a response is the position ``response_start − 1 + t``: the hidden state that predicts its
    token t. This is what :func:`sequence_logps` sends through the output layer, and what the eNTK of the
    last layer (:mod:`lldyn.decompose.llm`) and the CHES score (:mod:`lldyn.squeeze.risk`) read.
    """
    body = model.get_decoder()
    hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  position_ids=batch.position_ids, use_cache=False).last_hidden_state  # (B, L, H)
    B, L, H = hidden.shape
    T = int(batch.response_len.max())
    t = torch.arange(T, device=hidden.device)
    mask = t[None, :] < batch.response_len[:, None]
    pred_pos = (batch.response_start[:, None] - 1 + t[None, :]).clamp(0, L - 1)
    tgt_pos = (batch.response_start[:, None] + t[None, :]).clamp(0, L - 1)
    h = hidden.gather(1, pred_pos[..., None].expand(B, T, H))
    return ResponseHidden(h, batch.input_ids.gather(1, tgt_pos), mask)


def sequence_logps(model: Any, batch: TokenBatch, with_stats: bool = False, chunk_size: int = 512,
                   checkpoint_head: bool = False) -> TokenStats:
    """Differentiable per-token log-probs of the responses in ``batch`` (one forward pass).

    Returns :class:`TokenStats` of shape (B, T) with T = max response length; ``.logps`` is (B,).
    """
    h, targets, mask = response_hidden(model, batch)
    return token_stats(output_head(model), h, targets, mask, with_stats, chunk_size, checkpoint_head)


def response_hidden_states(model: Any, encoded: Sequence[EncodedPair], pad_id: int,
                           batch_size: int = 8) -> list[torch.Tensor]:
    """(T_i, H) hidden states of each encoded response (no grad, eval mode, full sequences in batches of
    ``batch_size``; float32 on the CPU), as :func:`response_hidden` aligns them."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                chunk = encoded[start:start + batch_size]
                h, _, mask = response_hidden(model, collate(chunk, pad_id).to(device))
                out += [h[i, :int(mask[i].sum())].float().cpu() for i in range(len(chunk))]
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------- many responses (no grad)


class ScoreRequest(NamedTuple):
    """One response to score under one prompt."""

    prompt: Prompt
    response: str
    where: Where | None = None


class ScoreResult(NamedTuple):
    """The engine's answer for one (prompt, response).

    logp: Σ_t log π(y_t|x, y_<t) over response tokens incl. EOS.
    n_tokens: response length in tokens (EOS included; fewer if cut).
    argmax_logp: log π(y*) of the teacher-forced argmax response along this response's prefix.
    mean_top1_prob / mean_entropy: mean over positions of max_v π and of the entropy (nats).
    argmax_ids: the y* tokens.
    truncated: whether the policy cut prompt or response tokens.
    token_logps / top1_probs / entropies: per position, when ``per_token=True``.
    """

    logp: float
    n_tokens: int
    argmax_logp: float
    mean_top1_prob: float
    mean_entropy: float
    argmax_ids: tuple[int, ...]
    truncated: bool
    token_logps: tuple[float, ...] | None = None
    top1_probs: tuple[float, ...] | None = None
    entropies: tuple[float, ...] | None = None

    @property
    def mean_logp(self) -> float:
        return self.logp / max(self.n_tokens, 1)


def _prompt_batches(groups: list[tuple[tuple[int, ...], list[int]]], config: ScoreConfig):
    """Pack prompt groups (sorted by prompt length) so that one prompt forward stays within budget."""
    batch: list[tuple[tuple[int, ...], list[int]]] = []
    for group in groups:
        longest = max([len(group[0])] + [len(p) for p, _ in batch])
        n_resp = sum(len(m) for _, m in batch) + len(group[1])
        if batch and ((len(batch) + 1) * longest > config.batch_tokens or n_resp > 4 * config.max_batch):
            yield batch
            batch = []
        batch.append(group)
    if batch:
        yield batch


def _length_chunks(rows: list[int], cost: Callable[[int, int], int], config: ScoreConfig):
    """Split ``rows`` (sorted by length) into chunks with ``cost(n_rows, longest_row)`` ≤ budget."""
    chunk: list[int] = []
    for i in rows:
        if chunk and (len(chunk) >= config.max_batch or cost(len(chunk) + 1, i) > config.batch_tokens):
            yield chunk
            chunk = []
        chunk.append(i)
    if chunk:
        yield chunk


class _PromptState(NamedTuple):
    """The cached forward pass of G left-padded prompts: per-layer keys/values (G, heads, Lp, d),
    the last position's hidden state (G, H) and the prompts' attention mask (G, Lp)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    last_hidden: torch.Tensor
    mask: torch.Tensor


def _prompt_forward(model: Any, prompts: Sequence[tuple[int, ...]], pad_id: int) -> _PromptState | None:
    device = next(model.parameters()).device
    G, Lp = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((G, Lp), pad_id, dtype=torch.long)
    att = torch.zeros((G, Lp), dtype=torch.long)
    for g, prompt_ids in enumerate(prompts):
        ids[g, Lp - len(prompt_ids):] = torch.tensor(prompt_ids)
        att[g, Lp - len(prompt_ids):] = 1
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    out = model.get_decoder()(input_ids=ids.to(device), attention_mask=att.to(device), position_ids=pos.to(device),
                              use_cache=True)
    layers = getattr(out.past_key_values, "layers", None)
    if not layers or not all(hasattr(layer, "keys") for layer in layers):
        return None  # a cache lldyn cannot slice (e.g. recurrent state): score full sequences instead
    return _PromptState([(layer.keys, layer.values) for layer in layers], out.last_hidden_state[:, -1], att)


def _response_forward(model: Any, state: _PromptState, owner: torch.Tensor,
                      responses: Sequence[tuple[int, ...]], pad_id: int, chunk_size: int,
                      with_stats: bool = True) -> TokenStats:
    """Score ``responses`` (R of them, right-padded) continuing the cached prompts ``owner`` (R,)."""
    from transformers import DynamicCache

    device = state.last_hidden.device
    owner = owner.to(device)
    R, Lr = len(responses), max(len(r) for r in responses)
    ids = torch.full((R, Lr), pad_id, dtype=torch.long)
    att = torch.zeros((R, Lr), dtype=torch.long)
    for row, resp in enumerate(responses):
        ids[row, :len(resp)] = torch.tensor(resp)
        att[row, :len(resp)] = 1
    ids, att = ids.to(device), att.to(device)
    cache = DynamicCache()
    for layer, (k, v) in enumerate(state.kv):  # each response row gets its own prompt's keys/values
        cache.update(k.index_select(0, owner), v.index_select(0, owner), layer)
    prompt_mask = state.mask.to(device).index_select(0, owner)
    pos = prompt_mask.sum(-1, keepdim=True) + torch.arange(Lr, device=device)[None, :]
    hidden = model.get_decoder()(input_ids=ids, attention_mask=torch.cat([prompt_mask, att], dim=1), position_ids=pos,
                                 past_key_values=cache, use_cache=True).last_hidden_state  # (R, Lr, H)
    aligned = torch.cat([state.last_hidden.index_select(0, owner)[:, None], hidden[:, :-1]], dim=1)
    return token_stats(output_head(model), aligned, ids, att.bool(), with_stats, chunk_size)


def shared_prompt_logps(model: Any, pairs: Sequence[EncodedPair], pad_id: int,
                        chunk_size: int = 512) -> TokenStats | None:
    """Differentiable :func:`sequence_logps` of ``pairs`` (B,) whose prompts repeat (a preference batch: each
    prompt with its y+ and its y−): every distinct prompt runs forward once, and its responses continue from
    its cached keys/values, through which their gradients flow back into the one prompt pass. Same values and
    gradients as the full sequences (tested), without running each prompt once per response.

    Returns TokenStats (B, T) in the order of ``pairs``, or None for a model whose cache cannot be sliced.
    """
    index: dict[tuple[int, ...], int] = {}
    owner = [index.setdefault(p.prompt_ids, len(index)) for p in pairs]
    state = _prompt_forward(model, list(index), pad_id)
    if state is None:
        return None
    return _response_forward(model, state, torch.tensor(owner, dtype=torch.long), [p.response_ids for p in pairs],
                             pad_id, chunk_size, with_stats=False)


# Decoders whose attention takes lldyn's 4D additive mask as is (transformers' masking_utils returns a 4D mask
# untouched) and that have no sliding-window layers; eager and sdpa attention only (flash has no 4D mask).
PACKABLE_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def can_pack(model: Any) -> bool:
    """Whether :func:`packed_logps` can score with ``model`` (else the engine uses prefix sharing)."""
    cfg = getattr(model, "config", None)
    return (getattr(cfg, "model_type", None) in PACKABLE_MODEL_TYPES
            and getattr(cfg, "_attn_implementation", None) in ("eager", "sdpa")
            and not getattr(cfg, "sliding_window", None))


class PackedRow(NamedTuple):
    """One packed row: groups ``(prompt_ids, [indices of its responses])`` laid out one after the other."""

    groups: list[tuple[tuple[int, ...], list[int]]]
    length: int


def pack_rows(encoded: Sequence[EncodedPair], pack_length: int) -> list[PackedRow]:
    """Lay every pair out once, prompts shared: a prompt's responses (shortest first) follow it in segments of at
    most ``max(pack_length, longest pair)`` tokens (a segment that would be longer repeats the prompt), and
    segments fill rows first-fit, longest first. Returns the rows sorted by length."""
    cap = max([pack_length] + [len(p.prompt_ids) + len(p.response_ids) for p in encoded])
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, pair in enumerate(encoded):
        by_prompt.setdefault(pair.prompt_ids, []).append(i)
    segments: list[tuple[tuple[int, ...], list[int], int]] = []
    for prompt, members in by_prompt.items():
        seg: list[int] = []
        used = len(prompt)
        for i in sorted(members, key=lambda i: len(encoded[i].response_ids)):
            n = len(encoded[i].response_ids)
            if seg and used + n > cap:
                segments.append((prompt, seg, used))
                seg, used = [], len(prompt)
            seg.append(i)
            used += n
        segments.append((prompt, seg, used))
    rows: list[PackedRow] = []
    for prompt, seg, size in sorted(segments, key=lambda s: -s[2]):
        for r, row in enumerate(rows):
            if row.length + size <= cap:
                row.groups.append((prompt, seg))
                rows[r] = PackedRow(row.groups, row.length + size)
                break
        else:
            rows.append(PackedRow([(prompt, seg)], size))
    return sorted(rows, key=lambda r: r.length)


def packed_logps(model: Any, encoded: Sequence[EncodedPair], rows: Sequence[PackedRow], pad_id: int,
                 chunk_size: int = 512, with_stats: bool = True) -> tuple[list[int], TokenStats]:
    """One forward pass over N packed ``rows`` of length ≤ L, no padding inside a row.

    Each token carries its group g and branch b (0 = the prompt, k = its k-th response); a query may see a key
    of the same group, not after it, that is in the prompt or in its own response, so each response sees exactly
    (its prompt, its own prefix), with position ids continuing its prompt's, as in a padded full sequence.

    Returns the indices of the R responses scored (into ``encoded``) and their TokenStats (R, T).
    """
    device = next(model.parameters()).device
    N, L = len(rows), max(r.length for r in rows)
    ids = torch.full((N, L), pad_id, dtype=torch.long)
    pos = torch.zeros((N, L), dtype=torch.long)
    group = torch.full((N, L), -1, dtype=torch.long)
    branch = torch.zeros((N, L), dtype=torch.long)
    order: list[int] = []
    pred: list[torch.Tensor] = []  # per response: flat positions (in N*L) of the states predicting its tokens
    for r, row in enumerate(rows):
        at = 0
        for g, (prompt, members) in enumerate(row.groups):
            lp = len(prompt)
            ids[r, at:at + lp] = torch.tensor(prompt)
            pos[r, at:at + lp] = torch.arange(lp)
            group[r, at:at + lp] = g
            last_prompt = r * L + at + lp - 1
            at += lp
            for b, i in enumerate(members, start=1):
                resp = encoded[i].response_ids
                n = len(resp)
                ids[r, at:at + n] = torch.tensor(resp)
                pos[r, at:at + n] = torch.arange(lp, lp + n)
                group[r, at:at + n] = g
                branch[r, at:at + n] = b
                pred.append(torch.cat([torch.tensor([last_prompt]), r * L + at + torch.arange(n - 1)]))
                order.append(i)
                at += n
    q, k = (slice(None), slice(None), None), (slice(None), None, slice(None))
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    allowed = (group[q] == group[k]) & (group[q] >= 0) & causal & ((branch[k] == 0) | (branch[q] == branch[k]))
    allowed |= torch.eye(L, dtype=torch.bool)  # padding sees itself (no empty softmax row); nothing sees padding
    dtype = next(model.parameters()).dtype
    mask = torch.zeros((N, 1, L, L), dtype=dtype).masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 position_ids=pos.to(device), use_cache=False).last_hidden_state  # (N, L, H)
    T = max(len(p) for p in pred)
    index = torch.zeros((len(pred), T), dtype=torch.long)
    targets = torch.full((len(pred), T), pad_id, dtype=torch.long)
    tmask = torch.zeros((len(pred), T), dtype=torch.bool)
    for row, (p, i) in enumerate(zip(pred, order)):
        index[row, :len(p)], tmask[row, :len(p)] = p, True
        targets[row, :len(p)] = torch.tensor(encoded[i].response_ids)
    index, targets, tmask = index.to(device), targets.to(device), tmask.to(device)
    aligned = hidden.reshape(N * L, -1).index_select(0, index.reshape(-1)).reshape(len(pred), T, -1)
    return order, token_stats(output_head(model), aligned, targets, tmask, with_stats, chunk_size)


def stats_batches(model: Any, encoded: Sequence[EncodedPair], pad_id: int, config: ScoreConfig):
    """Yield ``(indices, TokenStats)`` covering every pair once.

    With prefix sharing: prompts are batched and run once; their responses, sorted by length across
    the whole prompt batch (little padding), run in chunks that each slice the cached keys/values.
    Without it (or for a model whose cache cannot be sliced): full sequences in length buckets.
    With ``config.packing`` (and a model :func:`can_pack` accepts): packed rows, no padding (:func:`pack_rows`).
    """
    lengths = [len(p.response_ids) for p in encoded]
    total = [len(p.prompt_ids) + n for p, n in zip(encoded, lengths)]
    if config.packing and encoded and can_pack(model):
        rows = pack_rows(encoded, config.pack_length)
        for chunk in _length_chunks(list(range(len(rows))), lambda n, r: n * rows[r].length, config):
            yield packed_logps(model, encoded, [rows[r] for r in chunk], pad_id, config.chunk_size)
    elif config.prefix_sharing:
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        for i, pair in enumerate(encoded):
            by_prompt.setdefault(pair.prompt_ids, []).append(i)
        groups = sorted(by_prompt.items(), key=lambda g: len(g[0]))
        for batch in _prompt_batches(groups, config):
            state = _prompt_forward(model, [p for p, _ in batch], pad_id)
            members = sorted((i for _, m in batch for i in m), key=lambda i: lengths[i])
            if state is None:
                for chunk in _length_chunks(members, lambda n, i: n * total[i], config):
                    yield chunk, sequence_logps(model, collate([encoded[i] for i in chunk], pad_id).to(
                        next(model.parameters()).device), with_stats=True, chunk_size=config.chunk_size)
                continue
            owner_of = {i: g for g, (_, m) in enumerate(batch) for i in m}
            Lp = state.mask.shape[1]
            for chunk in _length_chunks(members, lambda n, i: n * (Lp + lengths[i]), config):
                owner = torch.tensor([owner_of[i] for i in chunk], dtype=torch.long)
                yield chunk, _response_forward(model, state, owner, [encoded[i].response_ids for i in chunk],
                                               pad_id, config.chunk_size)
    else:
        order = sorted(range(len(encoded)), key=lambda i: total[i])
        device = next(model.parameters()).device
        for chunk in _length_chunks(order, lambda n, i: n * total[i], config):
            yield chunk, sequence_logps(model, collate([encoded[i] for i in chunk], pad_id).to(device),
                                        with_stats=True, chunk_size=config.chunk_size)


def forward_passes(encoded: Sequence[EncodedPair], config: ScoreConfig) -> int:
    """How many forward passes of the decoder :func:`stats_batches` runs over ``encoded`` (the same batching,
    without a model), for a model whose key/value cache can be sliced (every transformer decoder). A sharded
    model needs it: every rank must run as many (:mod:`lldyn.distributed`)."""
    lengths = [len(p.response_ids) for p in encoded]
    if not config.prefix_sharing:
        total = [len(p.prompt_ids) + n for p, n in zip(encoded, lengths)]
        order = sorted(range(len(encoded)), key=lambda i: total[i])
        return sum(1 for _ in _length_chunks(order, lambda n, i: n * total[i], config))
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, pair in enumerate(encoded):
        by_prompt.setdefault(pair.prompt_ids, []).append(i)
    count = 0
    for batch in _prompt_batches(sorted(by_prompt.items(), key=lambda g: len(g[0])), config):
        Lp = max(len(p) for p, _ in batch)  # the prompts are left-padded to the longest
        members = sorted((i for _, m in batch for i in m), key=lambda i: lengths[i])
        count += 1 + sum(1 for _ in _length_chunks(members, lambda n, i: n * (Lp + lengths[i]), config))
    return count


def score(model: Any, tokenizer: Any, requests: Sequence[ScoreRequest], config: ScoreConfig = ScoreConfig(),
          per_token: bool = False, progress: bool = False, encoder: Encoder | None = None) -> list[ScoreResult]:
    """Score every request with ``model`` (no grad); results in the order of ``requests``."""
    encoder = encoder or Encoder(tokenizer, config)
    encoded = [encoder.pair(r.prompt, r.response, r.where) for r in requests]
    return score_encoded(model, encoded, tokenizer.pad_token_id, config, per_token, progress)


def score_encoded(model: Any, encoded: Sequence[EncodedPair], pad_id: int, config: ScoreConfig = ScoreConfig(),
                  per_token: bool = False, progress: bool = False) -> list[ScoreResult]:
    """:func:`score` on already-encoded pairs."""
    results: list[ScoreResult | None] = [None] * len(encoded)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(encoded), desc="scoring", unit="resp")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for order, st in stats_batches(model, encoded, pad_id, config):
                logps, n_tok = st.logps.cpu(), st.n_tokens.cpu()
                top1 = st.top1_logps.cpu()
                ent, arg, tok = st.entropies.cpu(), st.argmax_ids.cpu(), st.token_logps.cpu()
                if bar is not None:
                    bar.update(len(order))
                for row, i in enumerate(order):
                    n = int(n_tok[row])
                    top1_row = top1[row, :n]
                    results[i] = ScoreResult(
                        logp=float(logps[row]), n_tokens=n, argmax_logp=float(top1_row.sum()),
                        mean_top1_prob=float(top1_row.exp().mean()) if n else 0.0,
                        mean_entropy=float(ent[row, :n].mean()) if n else 0.0,
                        argmax_ids=tuple(int(v) for v in arg[row, :n]), truncated=encoded[i].truncated,
                        token_logps=tuple(float(v) for v in tok[row, :n]) if per_token else None,
                        top1_probs=tuple(float(v) for v in top1_row.exp()) if per_token else None,
                        entropies=tuple(float(v) for v in ent[row, :n]) if per_token else None,
                    )
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return results  # type: ignore[return-value]


def argmax_text(tokenizer: Any, result: ScoreResult) -> str:
    """The y* response as text (EOS and other special tokens dropped)."""
    return tokenizer.decode(list(result.argmax_ids), skip_special_tokens=True)
