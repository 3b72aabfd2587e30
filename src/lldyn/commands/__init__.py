"""One module per ``lldyn`` subcommand; each defines ``register(subparsers)``. See :mod:`lldyn.cli`."""
from pathlib import Path

from lldyn.config import build_config
from lldyn.errors import LldynError

# Every command module imports this one while ``lldyn --help`` builds its parser, so the engine (torch) is
# imported inside the function that needs it, as the commands do (see lldyn.cli).


def add_trust_remote_code(parser) -> None:
    """The one ``--trust-remote-code`` flag of every command that loads a model (off unless given)."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a Hub model run the Python code it ships with (off unless given; a run "
                             "directory's config never turns it on)")


def add_endpoint_args(parser) -> None:
    """The flags of a command that may call an OpenAI-compatible endpoint (``openai:MODEL``)."""
    parser.add_argument("--base-url", default=None, help="endpoint for openai:MODEL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                        help="environment variable holding the endpoint's API key (the key is never written)")


MODEL_HELP = ("alias (smollm2-135m-instruct, tiny-random-llama), .gguf file, model directory, Hub id, an lldyn "
              "run directory or one of its checkpoints (RUN/checkpoints/step-XXXXXXXX)")


def add_scoring_args(parser, what: str) -> None:
    """The flags of a command that scores a data file with the engine: model, data, output, tokenisation."""
    parser.add_argument("--model", default="smollm2-135m-instruct", help=MODEL_HELP)
    parser.add_argument("--data", required=True, help=f"{what} (.jsonl/.json/.parquet, builtin, hf:NAME)")
    parser.add_argument("--split", default="train", help="split for Hugging Face data sets")
    parser.add_argument("--out", required=True, help="output JSONL file (written atomically)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N examples")
    parser.add_argument("--raw", action="store_true", help="use prompt and response text verbatim (no chat template)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-prompt-tokens", type=int, default=None)
    parser.add_argument("--skip-invalid", action="store_true", help="skip rows with empty/missing fields (counted)")
    add_trust_remote_code(parser)


def scoring_inputs(args):
    """The output path and the engine's ScoreConfig of :func:`add_scoring_args` flags (checked first)."""
    from lldyn.scoring import ScoreConfig

    out = Path(args.out)
    if out.is_dir():
        raise LldynError("output is a directory", file=str(out), field="out", expected="a file path for JSONL rows")
    if args.limit is not None and args.limit < 1:
        raise LldynError(f"--limit must be >= 1, got {args.limit}", field="limit", expected="a positive number")
    return out, build_config(ScoreConfig, {"template": not args.raw, "max_length": args.max_length,
                                           "max_prompt_tokens": args.max_prompt_tokens})
