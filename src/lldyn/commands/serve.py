"""``lldyn serve``: an OpenAI-compatible chat endpoint for a local model (a local judge, a test server)."""
from __future__ import annotations

import argparse

from lldyn.commands import add_trust_remote_code


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a local model as an OpenAI-compatible chat endpoint",
                       description="POST /v1/chat/completions (greedy; max_tokens honoured) and GET /v1/models, "
                                   "answered by a real local model. Ctrl-C stops it.")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="alias, .gguf file, model directory, Hub id or lldyn run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port, printed)")
    p.add_argument("--name", default=None, help="model id reported to clients (default: --model)")
    p.add_argument("--api-key-env", default=None,
                   help="require clients to send the key held in this environment variable as a Bearer token")
    p.add_argument("--max-tokens-limit", type=int, default=2048, help="largest max_tokens a request may ask for")
    p.add_argument("--quiet", action="store_true", help="do not log requests")
    add_trust_remote_code(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    from lldyn.errors import LldynError
    from lldyn.runs import load_model_or_run
    from lldyn.serve import make_server

    if not 0 <= args.port <= 65535:
        raise LldynError(f"--port must be in 0..65535, got {args.port}", field="port",
                         expected="a TCP port, or 0 for any free one")
    if args.max_tokens_limit < 1:
        raise LldynError(f"--max-tokens-limit must be >= 1, got {args.max_tokens_limit}", field="max-tokens-limit")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise LldynError(f"environment variable {args.api_key_env} is empty or not set", field="api-key-env",
                             expected="the variable holding the key clients must send")
    lm = load_model_or_run(args.model, args.trust_remote_code)
    server = make_server(lm, args.host, args.port, model_id=args.name or args.model, api_key=api_key,
                         max_tokens_limit=args.max_tokens_limit, quiet=args.quiet)
    auth = "Bearer key required" if api_key else "no key required"
    print(f"serving {server.model_id} at {server.url} (POST /chat/completions, GET /models; {auth}); Ctrl-C stops",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
    return 0
