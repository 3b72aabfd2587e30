"""The ``lldyn`` command line: one parser, one subcommand per module in :mod:`lldyn.commands`.

Each command module defines ``register(subparsers)`` which adds its parser and sets ``run``
(a function taking the parsed namespace and returning an exit status). Heavy imports (torch,
transformers) happen inside ``run`` so that ``lldyn --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from lldyn.errors import LldynError

# Order is the order shown by ``lldyn --help``.
COMMANDS: tuple[str, ...] = (
    "mnist",
    "probes",
    "report",
    "score",
    "squeeze_toy",
)


def build_parser() -> argparse.ArgumentParser:
    from lldyn import __version__

    parser = argparse.ArgumentParser(
        prog="lldyn",
        description="Show, explain and predict what each finetuning step does to an LLM's responses.",
    )
    parser.add_argument("--version", action="version", version=f"lldyn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"lldyn.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Offline first: nothing reaches the Hub unless the user sets HF_HUB_OFFLINE=0 themselves.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except LldynError as err:
        print(f"lldyn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lldyn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
