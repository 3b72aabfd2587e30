"""First-order prediction and attribution of one LLM finetuning step (paper Sec. 2-3, eq. (3)-(5)).

For an LLM, Δ log π(y | x_o) = −η A K G summed over every response token would need the eNTK of a
vocabulary-sized output at every position. lldyn computes the same first-order quantity directly:

    Δ log π(y | x_o) ≈ ⟨∇_θ log π(y | x_o), Δθ⟩                                         (1)

with Δθ the **actual** parameter change of the step (so Adam/RMSprop preconditioning, clipping, weight
decay and momentum are all included), as one forward-mode product (``torch.func.jvp`` over
``torch.func.functional_call``) over the whole probe set instead of one backward per probe. log π
comes from the one engine inside the jvp: its own batching (``lldyn.scoring``'s prompt batches with a
shared key/value cache and length-sorted response chunks, the path :func:`lldyn.scoring.score_encoded`
runs), so a jvp costs about three scoring passes of the probe set.

**Attribution.** The training loop tells the decomposer the step's terms (docs/CONTRACTS.md,
:class:`UpdateTerm`): ∇θ(batch loss) = Σ_k w_k ∇θ log π(y_k), one term per (example, part) with
part ∈ {chosen, rejected, response} (SFT, DPO family) or {positive, negative, zero_advantage} (GRPO: the
sign of a completion's advantage). GRPO's coefficients are per token, so its terms are
Σ_t w_kt ∇θ log π(y_kt | x_k, y_k,<t) over the exact tokens that were sampled and trained on. Each term moves θ by Δθ_k and so moves each probe by
⟨∇θ log π(probe), Δθ_k⟩ (again a jvp). With g_k = w_k ∇θ log π(y_k) and s the gradient clipping
factor (read from the real ``.grad``), Δθ_k is

* SGD: −η·s·g_k, exact to first order: without momentum Σ_k Δθ_k = Δθ; with momentum the current
  gradient's share of the step is ``1 − dampening`` (``1 + μ(1 − dampening)`` with Nesterov);
* Adam/AdamW: −lr·(1−β1)/(1−β1^t)·s·g_k / (√(v_t/(1−β2^t)) + eps), the optimizer's diagonal
  preconditioner **after** the step (v_t already holds this step's gradient) treated as a constant;
  exact at the first step without weight decay, an approximation afterwards (v_t depends on the
  gradient itself);
* RMSprop: −lr·s·g_k / (√v_t + eps) (centered: √(v_t − ḡ_t²)), same approximation.

What the terms do not explain — momentum carried from earlier steps, weight decay, the rest of a
clipped or mismatched gradient — is the part ``other`` = prediction − Σ_k contributions, so the parts
always sum to the prediction; for plain SGD ``other`` is zero up to rounding.

**Cheap last-layer eNTK.** For logits z_t = W h_t of the unembedding W, ∂z_t/∂W gives
K_ij(t, s) = ⟨h_t, h_s⟩ δ_ij (+δ_ij with a bias): the token-level kernel between a probe response
and a training response is the (T_o, T_u) inner-product matrix of the hidden states the engine feeds
the output layer (:func:`last_layer_kernel`).

Shapes: P probes, T terms, |θ| trainable parameters. Only parameters with ``requires_grad`` take part
(LoRA: the adapters).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Sequence, Union

import torch
from torch import nn
from torch.func import functional_call, jvp

from lldyn.config import check
from lldyn.data import Prompt
from lldyn.decompose.classifier import compare
from lldyn.errors import LldynError
from lldyn.losses import UpdateTerm
from lldyn.probes import Probe
from lldyn.rundir import PolicySample, RunDir
from lldyn.scoring import (EncodedPair, Encoder, ScoreConfig, collate, response_hidden_states, score_encoded,
                           sequence_logps, stats_batches)

__all__ = [
    "PARTS",
    "DecomposeConfig",
    "FirstOrder",
    "ProbeRef",
    "StepDecomposer",
    "StepDecomposition",
    "TokenKernel",
    "attribute_step",
    "first_order_prediction",
    "jvp_logps",
    "last_layer_kernel",
    "naive_first_order_prediction",
    "optimizer_state_names",
    "optimizer_term_scale",
    "term_gradients",
    "trainable_parameters",
]

PARTS = ("chosen", "rejected", "response", "positive", "negative", "zero_advantage")
ProbeLike = Union[Probe, "tuple[Prompt, str]"]
Params = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------- values


class ProbeRef(NamedTuple):
    """Where a probe's numbers go: ``probe_id`` = ``prompt_id/family``."""

    probe_id: str
    prompt_id: str
    family: str


class FirstOrder(NamedTuple):
    """log π of P probes at θ and the first-order change ⟨∇θ log π, Δθ⟩ for each tangent.

    logps: (P,) log π(y | x) at θ (the jvp's primal, the engine's value).
    predicted: (K, P) one row per tangent Δθ.
    """

    logps: torch.Tensor
    predicted: torch.Tensor


class StepDecomposition(NamedTuple):
    """One optimizer step seen through the probes.

    before, after: (P,) log π at θ and θ + Δθ (engine). actual = after − before.
    predicted: (P,) ⟨∇θ log π, Δθ⟩ with the real Δθ.
    contributions: (T, P) ⟨∇θ log π, Δθ_k⟩ of each term k.
    other: (P,) predicted − Σ_k contributions (momentum, weight decay, unexplained gradient).
    terms: the T terms, in the order of ``contributions``.
    """

    before: torch.Tensor
    after: torch.Tensor
    predicted: torch.Tensor
    contributions: torch.Tensor
    other: torch.Tensor
    terms: tuple[UpdateTerm, ...]

    @property
    def actual(self) -> torch.Tensor:
        return self.after - self.before

    def by_part(self) -> dict[str, torch.Tensor]:
        """part → (P,) summed contributions, plus ``other``; the values sum to ``predicted``."""
        out = {part: torch.zeros_like(self.predicted) for part in PARTS if any(t.part == part for t in self.terms)}
        for term, contrib in zip(self.terms, self.contributions):
            out[term.part] = out[term.part] + contrib
        out["other"] = self.other
        return out

    def by_example(self) -> dict[str, torch.Tensor]:
        """example_id → (P,) summed contributions of its terms (without ``other``)."""
        out: dict[str, torch.Tensor] = {}
        for term, contrib in zip(self.terms, self.contributions):
            out[term.example_id] = out.get(term.example_id, torch.zeros_like(self.predicted)) + contrib
        return out


@dataclass(frozen=True)
class DecomposeConfig:
    """How the decomposition scores probes.

    score: the engine's tokenisation and batch budget (``batch_tokens`` padded tokens and at most
        ``max_batch`` sequences per jvp forward; a jvp holds about twice a forward's activations).
    every: decompose steps with ``step % every == 0`` (others cost nothing).
    """

    score: ScoreConfig = field(default_factory=ScoreConfig)
    every: int = 1

    def __post_init__(self) -> None:
        check(self.every >= 1, "decompose_every", f"must be >= 1, got {self.every}", "a positive integer")


# ----------------------------------------------------------------------------------------- helpers


def trainable_parameters(model: nn.Module) -> Params:
    """name → detached parameter, for every parameter with ``requires_grad`` (LoRA: the adapters)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _probe_refs(probes: Iterable[ProbeLike]) -> tuple[list[ProbeRef], list[tuple[Prompt, str]]]:
    refs, texts = [], []
    for i, probe in enumerate(probes):
        if isinstance(probe, Probe):
            refs.append(ProbeRef(probe.id, probe.prompt_id, probe.family))
            texts.append((probe.prompt, probe.response))
        elif isinstance(probe, (tuple, list)) and len(probe) == 2 and isinstance(probe[1], str):
            refs.append(ProbeRef(f"p{i}/probe", f"p{i}", "probe"))
            texts.append((probe[0], probe[1]))
        else:
            raise LldynError(f"probe {i} is a {type(probe).__name__}", field="probes",
                             expected="lldyn.probes.Probe objects or (prompt, response) pairs")
    return refs, texts


def _encode(tokenizer: Any, texts: Sequence[tuple[Prompt, str]], config: ScoreConfig) -> list[EncodedPair]:
    encoder = Encoder(tokenizer, config)
    return [encoder.pair(prompt, response) for prompt, response in texts]


class _ProbeLogps(nn.Module):
    """The probes' (P,) log π as a module of ``model``'s parameters, so ``functional_call`` can swap θ.

    Runs the engine's own batching (:func:`lldyn.scoring.score_encoded`'s: prompt batches whose key/value
    cache is shared by all responses of a prompt, responses length-sorted in chunks within
    ``batch_tokens``/``max_batch``), so a jvp costs what scoring the probe set costs, about three times.
    """

    def __init__(self, model: nn.Module, encoded: Sequence[EncodedPair], pad_id: int, config: ScoreConfig) -> None:
        super().__init__()
        self.model = model
        self.encoded, self.pad_id, self.config = list(encoded), pad_id, config

    def forward(self) -> torch.Tensor:
        device = _device(self.model)
        out = torch.zeros(len(self.encoded), dtype=torch.float32, device=device)
        for order, stats in stats_batches(self.model, self.encoded, self.pad_id, self.config):
            out = out.index_put((torch.tensor(order, device=device),), stats.logps.float())
        return out


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class _EvalMode:
    """Run with dropout off (as the engine scores) and restore the model's mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.was_training)


# ----------------------------------------------------------------------------------------- first order


def jvp_logps(model: nn.Module, encoded: Sequence[EncodedPair], pad_id: int, tangents: Sequence[Params],
              params: Params | None = None, config: ScoreConfig = ScoreConfig()) -> FirstOrder:
    """Forward-mode ⟨∇θ log π(probe), t⟩ for every probe and every tangent t, eq. (1).

    Args:
        encoded: P probes encoded by the engine (:class:`lldyn.scoring.Encoder`).
        tangents: K dicts name → tensor shaped like the parameter (names a subset of the trainable ones;
            parameters not named have zero tangent).
        params: θ at which to linearise (name → tensor), default the model's current trainable values.
    Returns:
        :class:`FirstOrder` with logps (P,) and predicted (K, P).

    One ``jvp`` per tangent over the engine's batching of the whole probe set (prefix sharing included),
    so its cost is about three scoring passes (each linear layer: W x, ΔW x and W Δx).
    Forward mode differentiates the function itself, including the embedding row of a padding token that
    is also a real token (SmolLM2 pads with ``<|im_end|>``, whose row the tied output layer does train);
    a plain backward through ``nn.Embedding(padding_idx=…)`` would miss that path.
    """
    params = trainable_parameters(model) if params is None else params
    names = sorted(set().union(*(t.keys() for t in tangents))) if tangents else []
    unknown = [n for n in names if n not in params]
    if unknown:
        raise LldynError(f"tangent names a parameter that is not trainable: {unknown[0]}", field="delta",
                         expected="names from model.named_parameters() with requires_grad")
    primal = {n: params[n] for n in names}
    fixed = {"model." + n: p for n, p in params.items() if n not in primal}
    wrapper = _ProbeLogps(model, encoded, pad_id, config)

    def f(theta: Params) -> torch.Tensor:
        return functional_call(wrapper, {**fixed, **{"model." + n: v for n, v in theta.items()}}, ())

    rows = []
    logps = None
    with _EvalMode(model), torch.no_grad():  # no_grad stops reverse-mode bookkeeping; forward mode still runs
        if not tangents:
            logps = f(primal)
        for tangent in tangents:
            full = {n: tangent[n] if n in tangent else torch.zeros_like(params[n]) for n in names}
            logps, derivative = jvp(f, (primal,), (full,))
            rows.append(derivative.double().cpu())
    predicted = torch.stack(rows) if rows else torch.zeros(0, len(encoded), dtype=torch.float64)
    logps = logps.double().cpu()
    return FirstOrder(logps=logps, predicted=predicted)


def first_order_prediction(model: nn.Module, tokenizer: Any, probes: Iterable[ProbeLike], delta: Params,
                           config: ScoreConfig = ScoreConfig(), params: Params | None = None) -> FirstOrder:
    """Predicted Δ log π of every probe for a parameter change ``delta``: ⟨∇θ log π(probe), Δθ⟩, eq. (1).

    Args:
        probes: P :class:`lldyn.probes.Probe` or (prompt, response) pairs.
        delta: name → Δθ (e.g. θ_after − θ_before of one optimizer step, whatever the optimizer).
        params: θ_before (default: the model's current trainable values).
    Returns:
        :class:`FirstOrder`: logps (P,) at θ and predicted (1, P).
    """
    _, texts = _probe_refs(probes)
    return jvp_logps(model, _encode(tokenizer, texts, config), tokenizer.pad_token_id, [delta], params, config)


class _TrueEmbeddingGradients:
    """Within: ``nn.Embedding(padding_idx=…)`` back-propagates into its padding row too.

    ``padding_idx`` only changes the backward (that row gets no gradient); the function still reads the
    row. Models that pad with a real token (SmolLM2: ``<|im_end|>``, tied to the output layer, so
    optimizer steps do change that row) need the true derivative for ⟨∇θ log π, Δθ⟩.
    """

    def __init__(self, model: nn.Module) -> None:
        self.saved = [(m, m.padding_idx) for m in model.modules()
                      if isinstance(m, nn.Embedding) and m.padding_idx is not None]

    def __enter__(self) -> None:
        for module, _ in self.saved:
            module.padding_idx = None

    def __exit__(self, *exc: Any) -> None:
        for module, idx in self.saved:
            module.padding_idx = idx


def naive_first_order_prediction(model: nn.Module, tokenizer: Any, probes: Iterable[ProbeLike], delta: Params,
                                 config: ScoreConfig = ScoreConfig()) -> torch.Tensor:
    """Reference for :func:`first_order_prediction` (tests, benchmark): one backward per probe at the model's
    current θ (full sequence, engine), dot with ``delta`` (float32 dot per tensor, summed in float64).

    Returns (P,) float64.
    """
    _, texts = _probe_refs(probes)
    named = dict(model.named_parameters())
    names = list(delta)
    out = []
    with _EvalMode(model), _TrueEmbeddingGradients(model):
        for pair in _encode(tokenizer, texts, config):
            batch = collate([pair], tokenizer.pad_token_id).to(_device(model))
            logp = sequence_logps(model, batch, chunk_size=config.chunk_size).logps[0]
            grads = torch.autograd.grad(logp, [named[n] for n in names], allow_unused=True)
            out.append(sum(float(torch.dot(g.reshape(-1), delta[n].reshape(-1).to(g.dtype)))
                           for g, n in zip(grads, names) if g is not None))
    return torch.tensor(out, dtype=torch.float64)


# ----------------------------------------------------------------------------------------- attribution


def term_gradients(model: nn.Module, tokenizer: Any, terms: Sequence[UpdateTerm],
                   config: ScoreConfig = ScoreConfig()) -> list[Params]:
    """g_k = weight_k · ∇θ log π(y_k | x_k) for each term (trainable parameters only); for a term with
    ``token_weights`` w_kt, g_k = ∇θ Σ_t w_kt log π(y_kt | x_k, y_k,<t).

    A term's tokens are its ``prompt_ids``/``response_ids`` when it has them (what was trained on), else the
    engine's encoding of its text. One forward over all terms (engine), one backward per term; the model's
    ``.grad`` is untouched. These are the gradients the optimizer sees (``padding_idx`` rows get none, as in
    training). Memory: T × |θ| numbers (SmolLM2 full finetuning: 0.54 GB a term; LoRA: the adapters only).
    """
    if not terms:
        return []
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    encoder = Encoder(tokenizer, config)
    encoded = [EncodedPair(t.prompt_ids, t.response_ids) if t.response_ids is not None and t.prompt_ids is not None
               else encoder.pair(t.prompt, t.response) for t in terms]
    for term, pair in zip(terms, encoded):
        if term.token_weights is not None and len(term.token_weights) != len(pair.response_ids):
            raise LldynError(f"update term {term.example_id!r} has {len(term.token_weights)} token weights for "
                             f"{len(pair.response_ids)} response tokens", field="token_weights",
                             expected="one weight per response token (give response_ids with them)")
    out = []
    with _EvalMode(model), torch.enable_grad():
        batch = collate(encoded, tokenizer.pad_token_id).to(_device(model))
        stats = sequence_logps(model, batch, chunk_size=config.chunk_size)
        for k, term in enumerate(terms):
            if term.token_weights is None:
                target, factor = stats.logps[k], float(term.weight)
            else:
                w = torch.tensor(term.token_weights, dtype=stats.token_logps.dtype, device=stats.token_logps.device)
                target, factor = (stats.token_logps[k, :len(w)] * w).sum(), 1.0
            grads = torch.autograd.grad(target, list(named.values()), retain_graph=k + 1 < len(terms),
                                        allow_unused=True)
            out.append({n: (factor * g if g is not None else torch.zeros_like(named[n]))
                        for n, g in zip(named, grads)})
    return out


def _inner_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    inner = optimizer
    while not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer"):
        inner = inner.optimizer  # accelerate / lr wrappers
    return inner


def optimizer_state_names(optimizer: Any, model: nn.Module) -> frozenset[str]:
    """Names of the trainable parameters that already have optimizer state (read before a step)."""
    opt = _inner_optimizer(optimizer)
    return frozenset(n for n, p in model.named_parameters() if p.requires_grad and opt.state.get(p))


def optimizer_term_scale(optimizer: Any, model: nn.Module, had_state: frozenset[str] | None = None) -> Params:
    """name → c (a tensor shaped like the parameter, or a scalar) such that a gradient g taken by this step
    moves θ by −c·g (elementwise; c < 0 under ``maximize``).

    Read **after** ``optimizer.step()`` and before the scheduler moves the learning rate on (module
    docstring for the formulas and the approximation). ``had_state``: :func:`optimizer_state_names` read
    before the step; SGD's first step with momentum copies the gradient into a new buffer, undampened,
    so for parameters not in it the current gradient's share is 1 (None: every buffer existed).
    Parameters the optimizer does not hold, or that got no gradient, are left out (they do not move).
    """
    opt = _inner_optimizer(optimizer)
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    scale: Params = {}
    for group in opt.param_groups:
        lr = float(group["lr"])
        sign = -1.0 if group.get("maximize", False) else 1.0
        for p in group["params"]:
            if id(p) not in names:
                continue
            state = opt.state.get(p, {})
            if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
                if "exp_avg_sq" not in state:
                    continue  # no gradient this step: not moved by the terms
                beta1, beta2 = group["betas"]
                t = float(state["step"])
                v = state.get("max_exp_avg_sq") if group.get("amsgrad") else None
                v = state["exp_avg_sq"] if v is None else v
                denom = (v / (1 - beta2 ** t)).sqrt() + group["eps"]
                c = lr * (1 - beta1) / (1 - beta1 ** t) / denom
            elif isinstance(opt, torch.optim.RMSprop):
                if "square_avg" not in state:
                    continue
                v = state["square_avg"]
                if group.get("centered"):
                    v = v - state["grad_avg"] ** 2
                c = lr / (v.sqrt() + group["eps"])
            elif isinstance(opt, torch.optim.SGD):
                share = 1.0
                if group.get("momentum", 0):
                    fresh = had_state is not None and names[id(p)] not in had_state
                    share = 1.0 if fresh else 1.0 - group.get("dampening", 0)
                    if group.get("nesterov"):
                        share = 1.0 + group["momentum"] * share
                c = torch.tensor(lr * share, dtype=p.dtype, device=p.device)
            else:
                raise LldynError(f"the decomposition does not know the optimizer {type(opt).__name__}",
                                 field="optimizer", expected="SGD, Adam, AdamW or RMSprop")
            scale[names[id(p)]] = sign * c.detach()
    return scale


def attribute_step(model: nn.Module, encoded: Sequence[EncodedPair], pad_id: int, theta_before: Params,
                   terms: Sequence[UpdateTerm], term_updates: Sequence[Params],
                   config: ScoreConfig = ScoreConfig()) -> StepDecomposition:
    """Decompose the step that took ``theta_before`` to the model's current θ.

    Args:
        encoded: P probes (engine encoding).
        theta_before: name → θ before the step (trainable parameters).
        terms / term_updates: T terms and their parameter changes Δθ_k (name → tensor).
    Returns:
        :class:`StepDecomposition`; ``predicted`` uses the real Δθ = θ − θ_before, the T contributions use
        Δθ_k, all linearised at θ_before.
    """
    now = trainable_parameters(model)
    delta = {n: now[n] - theta_before[n] for n in theta_before}
    first = jvp_logps(model, encoded, pad_id, [delta, *term_updates], theta_before, config)
    # The engine's no-grad path runs the very computation of the jvp's primal: after − before is exact.
    after = torch.tensor([r.logp for r in score_encoded(model, encoded, pad_id, config)], dtype=torch.float64)
    predicted, contributions = first.predicted[0], first.predicted[1:]
    return StepDecomposition(before=first.logps, after=after, predicted=predicted, contributions=contributions,
                             other=predicted - contributions.sum(0), terms=tuple(terms))


class _Pending(NamedTuple):
    step: int
    theta: Params
    terms: tuple[UpdateTerm, ...]
    grads: list[Params]
    grad_scale: float
    grad_cosine: float
    started: float
    had_state: frozenset[str] | None


class StepDecomposer:
    """The training loop's decomposition hook (docs/CONTRACTS.md).

    ``before_step(step, model, terms)`` right before ``optimizer.step()`` snapshots θ and takes each
    term's gradient; ``after_step(step, model, optimizer)`` right after measures Δθ, the actual and the
    predicted Δ log π of every probe and each term's contribution, appends one row per probe to
    ``RUN/decompose.jsonl`` (when ``run`` is given) and returns a summary dict for ``metrics.jsonl``.
    The last result is kept as ``self.last`` (:class:`StepDecomposition`).

    Args:
        tokenizer: the model's tokenizer.
        probes: :class:`lldyn.probes.ProbeSet`, Probes or (prompt, response) pairs.
        run: a run directory (path or :class:`lldyn.rundir.RunDir`) or None (no file).
        samples: GRPO's policy samples (:mod:`lldyn.policy_samples`), decomposed as probes of their family
            (``sample_correct`` / ``sample_incorrect``, probe id ``prompt_id/family/sample``) on the exact tokens
            sampled, as the tracker scores them.
    """

    def __init__(self, tokenizer: Any, probes: Iterable[ProbeLike], run: Any = None,
                 config: DecomposeConfig = DecomposeConfig(), samples: Sequence[PolicySample] = ()) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.refs, texts = _probe_refs(probes)
        self.encoded = _encode(tokenizer, texts, config.score)
        for s in samples:
            self.refs.append(ProbeRef(f"{s.prompt_id}/{s.family}/{s.sample}", s.prompt_id, s.family))
            self.encoded.append(EncodedPair(s.prompt_ids, s.completion_ids))
        self.run = None if run is None else (run if isinstance(run, RunDir) else RunDir(run))
        self.last: StepDecomposition | None = None
        self._pending: _Pending | None = None

    def wants(self, step: int) -> bool:
        return step % self.config.every == 0

    def before_step(self, step: int, model: nn.Module, terms: Sequence[UpdateTerm], optimizer: Any = None) -> None:
        self._pending = None
        if not self.wants(step):
            return
        started = time.perf_counter()
        for term in terms:
            if term.part not in PARTS:
                raise LldynError(f"update term part {term.part!r}", field="part", expected=" / ".join(PARTS))
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        theta = {n: p.detach().clone() for n, p in named.items()}
        grads = term_gradients(model, self.tokenizer, terms, self.config.score)
        # The optimizer sees .grad (clipped, accumulated); the terms' sum should point the same way.
        dot = total_sq = grad_sq = 0.0
        have_grad = any(p.grad is not None for p in named.values())
        for n, p in named.items():
            g_sum = sum((g[n] for g in grads), torch.zeros_like(p)).double()
            total_sq += float((g_sum * g_sum).sum())
            if p.grad is not None:
                dot += float((p.grad.double() * g_sum).sum())
                grad_sq += float((p.grad.double() ** 2).sum())
        scale = dot / total_sq if have_grad and total_sq > 0 else 1.0
        cosine = dot / math.sqrt(total_sq * grad_sq) if have_grad and total_sq > 0 and grad_sq > 0 else float("nan")
        had_state = None if optimizer is None else optimizer_state_names(optimizer, model)
        self._pending = _Pending(step, theta, tuple(terms), grads, scale, cosine, started, had_state)

    def after_step(self, step: int, model: nn.Module, optimizer: Any) -> dict[str, float]:
        pending, self._pending = self._pending, None
        if pending is None or pending.step != step:
            return {}
        scale = optimizer_term_scale(optimizer, model, pending.had_state)
        updates = [{n: -pending.grad_scale * scale[n] * g[n] for n in g if n in scale} for g in pending.grads]
        result = attribute_step(model, self.encoded, self.tokenizer.pad_token_id, pending.theta, pending.terms,
                                updates, self.config.score)
        self.last = result
        delta_sq = sum(float(((p - pending.theta[n]).double() ** 2).sum())
                       for n, p in trainable_parameters(model).items())
        rows = self._rows(step, result)
        if self.run is not None:
            self.run.append_decompose_rows(rows)
        return self._summary(result, rows, {
            "decompose/delta_theta_norm": math.sqrt(delta_sq),
            "decompose/grad_cosine": pending.grad_cosine,
            "decompose/grad_scale": pending.grad_scale,
            "decompose/seconds": time.perf_counter() - pending.started,
        })

    def _rows(self, step: int, result: StepDecomposition) -> list[dict[str, Any]]:
        parts, examples = result.by_part(), result.by_example()
        rows = []
        for i, ref in enumerate(self.refs):
            rows.append({
                "step": step, "probe_id": ref.probe_id, "prompt_id": ref.prompt_id, "family": ref.family,
                "logp_before": float(result.before[i]), "actual": float(result.actual[i]),
                "predicted": float(result.predicted[i]),
                "parts": {part: float(v[i]) for part, v in parts.items()},
                "examples": {eid: float(v[i]) for eid, v in examples.items()},
            })
        return rows

    @staticmethod
    def _summary(result: StepDecomposition, rows: list[dict[str, Any]], extra: dict[str, float]) -> dict[str, float]:
        cmp = compare(result.predicted, result.actual)
        out = {"decompose/n_probes": float(len(rows)), "decompose/pearson": cmp.pearson,
               "decompose/median_relative_error": cmp.median_relative_error, **extra}
        families: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            families.setdefault(row["family"], []).append(row)
        for family, members in families.items():
            n = len(members)
            out[f"decompose/actual/{family}"] = sum(r["actual"] for r in members) / n
            out[f"decompose/predicted/{family}"] = sum(r["predicted"] for r in members) / n
            for part in members[0]["parts"]:
                out[f"decompose/{part}/{family}"] = sum(r["parts"][part] for r in members) / n
        return out


# ----------------------------------------------------------------------------------------- last-layer eNTK


class TokenKernel(NamedTuple):
    """Last-layer eNTK between a probe response (T_o tokens) and a training response (T_u tokens).

    kernel: (T_o, T_u) ⟨h_t, h_s⟩ (+1 with an output bias); the full logit kernel is kernel[t, s]·I_V.
    probe_tokens / train_tokens: the response tokens as text pieces (EOS included).
    """

    kernel: torch.Tensor
    probe_tokens: tuple[str, ...]
    train_tokens: tuple[str, ...]


def last_layer_kernel(model: nn.Module, tokenizer: Any, probe: tuple[Prompt, str], train: tuple[Prompt, str],
                      config: ScoreConfig = ScoreConfig()) -> TokenKernel:
    """Token-level eNTK of the unembedding layer alone between two responses (module docstring).

    For z_t = W h_t (+ b): ∂z_t,i/∂W_kl = δ_ik h_t,l, so
    K_ij(t, s) = Σ_kl δ_ik h_t,l δ_jk h_s,l = ⟨h_t, h_s⟩ δ_ij.
    A final logit soft-cap (Gemma-2) is not included: this is the kernel of the pre-cap logits.

    Args:
        probe, train: (prompt, response) pairs.
    Returns:
        :class:`TokenKernel` with kernel (T_o, T_u), float32 on CPU.
    """
    encoded = _encode(tokenizer, [probe, train], config)
    h_o, h_u = response_hidden_states(model, encoded, tokenizer.pad_token_id)
    kernel = h_o @ h_u.T
    if getattr(model.get_output_embeddings(), "bias", None) is not None:
        kernel = kernel + 1.0

    def pieces(ids: Sequence[int]) -> tuple[str, ...]:
        return tuple(tokenizer.decode([i]) for i in ids)

    return TokenKernel(kernel.cpu(), pieces(encoded[0].response_ids), pieces(encoded[1].response_ids))
