"""A small OpenAI-compatible chat server for a local model (``lldyn serve``).

Standard library only (``http.server.ThreadingHTTPServer``). Two routes:

* ``POST /v1/chat/completions`` — ``{"model", "messages", "max_tokens" | "max_completion_tokens"}`` →
  a ``chat.completion`` object. Decoding is always greedy (``lldyn.generation.generate``), so
  ``temperature``/``top_p`` are accepted and ignored; ``max_tokens`` is honoured up to the server's
  ``max_tokens_limit``; ``n`` > 1 and ``stream`` are refused with HTTP 400;
* ``GET /v1/models`` — the one model served.

With ``api_key`` set, every request must carry ``Authorization: Bearer <key>`` (else HTTP 401); the
key is compared in constant time and never logged. Generation runs under a lock: one request at a
time touches the model. Used by the tests of the OpenAI-compatible judge client and by anyone who
wants a local judge (``lldyn judge --judge openai:NAME --base-url http://127.0.0.1:PORT``).
"""
from __future__ import annotations

import hmac
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from lldyn.errors import LldynError
from lldyn.generation import GenerationConfig, generate
from lldyn.scoring import ScoreConfig, encode_prompt

MAX_BODY_BYTES = 8 * 1024 * 1024


class BadRequest(Exception):
    """A client error answered as HTTP ``status`` with an OpenAI-style error object."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _content_text(content: Any, index: int) -> str:
    """A message's content: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise BadRequest(f"messages[{index}].content must be a string or a list of text parts")


def parse_chat_request(body: Any, max_tokens_limit: int, default_max_tokens: int = 256) -> tuple[list[dict[str, str]], int]:
    """Validate a chat-completions request body → (messages, max_tokens); :class:`BadRequest` on a problem."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with 'role' and 'content'")
        out.append({"role": msg["role"], "content": _content_text(msg.get("content"), i)})
    if body.get("stream"):
        raise BadRequest("streaming is not supported by lldyn serve")
    if body.get("n", 1) != 1:
        raise BadRequest("only n = 1 is supported")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = min(default_max_tokens, max_tokens_limit)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(f"'max_tokens' must be a positive integer, got {max_tokens!r}")
    if max_tokens > max_tokens_limit:
        raise BadRequest(f"'max_tokens' {max_tokens} is over this server's limit of {max_tokens_limit}")
    return out, max_tokens


class ChatServer(ThreadingHTTPServer):
    """The HTTP server holding one loaded model (``lm``: a :class:`lldyn.models.LoadedModel`)."""

    daemon_threads = True

    def __init__(self, lm: Any, host: str = "127.0.0.1", port: int = 0, model_id: str | None = None,
                 api_key: str | None = None, max_tokens_limit: int = 2048, quiet: bool = False) -> None:
        self.lm = lm
        self.model_id = model_id or lm.name
        self._api_key = api_key
        self.max_tokens_limit = max_tokens_limit
        self.quiet = quiet
        self.lock = threading.Lock()
        self.created = int(time.time())
        try:
            super().__init__((host, port), _Handler)
        except OSError as err:
            raise LldynError(f"cannot listen on {host}:{port}: {err.strerror or err}", field="port",
                             expected="a free port (or 0 for any free port) and a local address") from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def authorized(self, header: str | None) -> bool:
        if not self._api_key:
            return True
        return hmac.compare_digest((header or "").encode("utf-8"), f"Bearer {self._api_key}".encode("utf-8"))

    def complete(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[str, int, int]:
        """Greedy reply to ``messages`` → (text, prompt_tokens, completion_tokens)."""
        model, tokenizer = self.lm.model, self.lm.tokenizer
        positions = getattr(model.config, "max_position_embeddings", None) or 4096
        room = positions - max_tokens
        if room < 1:
            raise BadRequest(f"'max_tokens' {max_tokens} leaves no room for the prompt ({positions} positions)")
        with self.lock:
            try:
                prompt_tokens = min(room, len(encode_prompt(tokenizer, messages, ScoreConfig())))
            except LldynError as err:
                raise BadRequest(err.message) from None
            except Exception as err:  # the chat template rejects the roles or their order
                raise BadRequest(f"cannot apply the chat template: {err}") from None
            text = generate(model, tokenizer, [messages],
                            GenerationConfig(max_new_tokens=max_tokens, max_prompt_tokens=room))[0]
        # generate() returns text, so the count re-tokenises it: approximate (a byte split inside a character
        # decodes to U+FFFD and re-encodes longer), hence capped at the budget the generation honoured.
        completion_tokens = min(max_tokens, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        return text, prompt_tokens, completion_tokens


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer
    server_version = "lldyn-serve"

    def log_message(self, format: str, *args: Any) -> None:  # request line and status only, never headers
        if not self.server.quiet:
            sys.stderr.write(f"lldyn serve: {self.address_string()} {format % args}\n")

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: BadRequest) -> None:
        self._send(err.status, {"error": {"message": str(err), "type": err.code, "param": None, "code": err.code}})

    def _route(self) -> str:
        path = urlsplit(self.path).path.rstrip("/")
        return path[3:] if path.startswith("/v1/") else path

    def _check_auth(self) -> None:
        if not self.server.authorized(self.headers.get("Authorization")):
            raise BadRequest("invalid or missing API key (send Authorization: Bearer KEY)", 401, "invalid_api_key")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        try:
            self._check_auth()
            if self._route() != "/models":
                raise BadRequest(f"no route GET {urlsplit(self.path).path}", 404, "not_found")
            self._send(200, {"object": "list", "data": [{"id": self.server.model_id, "object": "model",
                                                         "created": self.server.created, "owned_by": "lldyn"}]})
        except BadRequest as err:
            self._error(err)

    def do_POST(self) -> None:  # noqa: N802
        try:
            self._check_auth()
            if self._route() != "/chat/completions":
                raise BadRequest(f"no route POST {urlsplit(self.path).path}", 404, "not_found")
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY_BYTES:
                raise BadRequest(f"a JSON body of 1 to {MAX_BODY_BYTES} bytes is required (Content-Length)")
            try:
                body = json.loads(self.rfile.read(length).decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise BadRequest("the request body is not valid JSON") from None
            messages, max_tokens = parse_chat_request(body, self.server.max_tokens_limit)
            text, n_prompt, n_completion = self.server.complete(messages, max_tokens)
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.server.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if n_completion >= max_tokens else "stop"}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                          "total_tokens": n_prompt + n_completion},
            })
        except BadRequest as err:
            self._error(err)
        except Exception as err:  # a bug or a model failure: answer 500 rather than dropping the connection
            self._error(BadRequest(f"generation failed: {type(err).__name__}: {err}", 500, "server_error"))


def make_server(lm: Any, host: str = "127.0.0.1", port: int = 0, model_id: str | None = None,
                api_key: str | None = None, max_tokens_limit: int = 2048, quiet: bool = False) -> ChatServer:
    """A bound (not yet serving) :class:`ChatServer`; ``port=0`` picks a free port (see ``server.url``)."""
    return ChatServer(lm, host, port, model_id, api_key, max_tokens_limit, quiet)
