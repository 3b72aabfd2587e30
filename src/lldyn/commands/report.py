"""``lldyn report RUN [RUN2 ...]``: figures and one self-contained report.html for tracked runs."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="draw probe-family figures and write report.html for one or more runs",
                       description="Per probe family: mean and inter-quartile band of log π over steps and the change "
                                   "since step 0, several runs overlaid; a table of the last step's mean change.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (with a probe table)")
    p.add_argument("--out", default=None, help="output directory (default: the first RUN)")
    p.add_argument("--title", default="lldyn learning dynamics report")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lldyn.errors import LldynError
    from lldyn.report import write_report

    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise LldynError("output path is a file", file=args.out, field="out", expected="a directory for report.html")
    path = write_report(args.runs, args.out, title=args.title)
    print(f"wrote {path} (figures in {path.parent / 'figures'})")
    return 0
