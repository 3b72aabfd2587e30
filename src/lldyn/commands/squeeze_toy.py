"""``lldyn squeeze-toy``: the squeezing-effect theory toy (Ren & Sutherland, Sec. 3.3 and App. C).

Runs the linear-softmax toy's five cases and two sweeps, writes ``squeeze-toy-*.png`` and
``claims.json`` into ``--out`` and prints one PASS/FAIL line per claim.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "squeeze-toy", help="reproduce the paper's squeezing-effect toy (figures + checked claims)",
        description="A linear softmax head (V=50, d=4; and V=1000, d=50) under positive and negative "
                    "gradients: figures of π before/after and the quantified claims of the squeezing effect.",
    )
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="seed for the toy's weights and inputs (default 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lldyn.errors import LldynError
    from lldyn.experiments.squeeze_toy import run_squeeze_toy

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LldynError("output exists and is not a directory", file=str(out), field="--out",
                         expected="a directory path; it is created if missing")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LldynError(f"cannot create output directory: {err.strerror}", file=str(out), field="--out") from None
    report = run_squeeze_toy(out, seed=args.seed)
    for claim in report.claims:
        print(claim.line())
    n_pass = sum(c.passed for c in report.claims)
    print(f"{n_pass}/{len(report.claims)} claims hold; figures: "
          + ", ".join(str(f) for f in report.figures))
    print(f"claims and numbers: {report.claims_path}")
    return 0
