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
    "decompose",
    "demo",
    "judge",
    "kernel",
    "mnist",
    "predict",
    "probes",
    "report",
    "reproduce",
    "score",
    "serve",
    "squeeze_risk",
    "lld_risk",
    "squeeze_toy",
    "train",
)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong and where to look), not the whole usage text."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from lldyn import __version__

    parser = OneLineParser(
        prog="lldyn",
        description="Show, explain and predict what each finetuning step does to an LLM's responses.",
    )
    parser.add_argument("--version", action="version", version=f"lldyn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"lldyn.commands.{name}").register(sub)
    return parser


def _close_progress_bars() -> None:
    """A failure mid-loop leaves a tqdm bar open, which would redraw itself after the error line."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(std.tqdm, "_instances", ()) if std else ()):
        bar.close()


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
        _close_progress_bars()
        print(f"lldyn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lldyn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
