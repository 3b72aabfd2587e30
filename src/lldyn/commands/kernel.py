"""``lldyn kernel``: the token-level last-layer eNTK between two responses of a probe set, as a heatmap.

K(t, s) = ⟨h_t, h_s⟩·I for the unembedding layer (:func:`lldyn.decompose.llm.last_layer_kernel`): how
much an update on training token s moves the logits at probe token t, through the output layer alone.
Both responses are named by probe id (``PROMPT_ID/FAMILY``), e.g. a probe's ``chosen`` against another
training prompt's ``rejected``.
"""
from __future__ import annotations

import argparse

from lldyn.commands import add_trust_remote_code


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kernel", help="heatmap of the last-layer eNTK between two probe responses (token level)",
                       description="Token-level kernel K(t, s) = <h_t, h_s> of the output layer between the "
                                   "response of probe --probe (rows) and of probe --train (columns), both from "
                                   "--probes. Writes a PNG and a JSON with the matrix and the tokens.")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="alias, .gguf file, directory, Hub id, an lldyn run directory or one of its checkpoints")
    p.add_argument("--probes", required=True, help="probes.jsonl (lldyn probes build)")
    p.add_argument("--probe", required=True, metavar="PROMPT_ID/FAMILY", help="the probe response x_o, y (rows)")
    p.add_argument("--train", required=True, metavar="PROMPT_ID/FAMILY",
                   help="the training response x_u, y_u (columns), e.g. another prompt's chosen")
    p.add_argument("--out", required=True, help="output PNG (a .json with the numbers is written next to it)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-prompt-tokens", type=int, default=None)
    add_trust_remote_code(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lldyn.decompose.llm import last_layer_kernel
    from lldyn.decompose.plots import plot_token_kernel
    from lldyn.errors import LldynError
    from lldyn.io import atomic_write_json
    from lldyn.probes import ProbeSet
    from lldyn.scoring import ScoreConfig
    from lldyn.runs import load_model_or_run

    out = Path(args.out)
    if out.suffix.lower() != ".png" or out.is_dir():
        raise LldynError("output must be a .png file path", file=str(out), field="out", expected="e.g. kernel.png")
    probes = ProbeSet.load(args.probes)
    picked = []
    for flag, spec in (("probe", args.probe), ("train", args.train)):
        prompt_id, _, family = spec.rpartition("/")
        probe = probes.get(prompt_id, family) if prompt_id else None
        if probe is None:
            raise LldynError(f"no probe {spec!r}", file=args.probes, field=flag,
                             expected="PROMPT_ID/FAMILY of a probe in the file, e.g. " + probes.probes[0].id)
        picked.append(probe)
    config = ScoreConfig(max_length=args.max_length, max_prompt_tokens=args.max_prompt_tokens)
    lm = load_model_or_run(args.model, args.trust_remote_code)
    (p_o, p_u) = picked
    kernel = last_layer_kernel(lm.model, lm.tokenizer, (p_o.prompt, p_o.response), (p_u.prompt, p_u.response), config)
    plot_token_kernel(kernel, out, title=f"last-layer eNTK ⟨h_t, h_s⟩: {p_o.id} (rows) vs {p_u.id} (columns)")
    atomic_write_json(out.with_suffix(".json"), {"probe": p_o.id, "train": p_u.id, "model": args.model,
                                                 "probe_tokens": list(kernel.probe_tokens),
                                                 "train_tokens": list(kernel.train_tokens),
                                                 "kernel": kernel.kernel.tolist()})
    print(f"wrote {out} and {out.with_suffix('.json')} ({len(kernel.probe_tokens)} × {len(kernel.train_tokens)} tokens)")
    return 0
