"""One client for OpenAI-compatible chat-completion endpoints (the judge, the rephraser).

Standard library only (``urllib``). The API key is read from an environment variable at request
time and sent as ``Authorization: Bearer``; it is never kept in an attribute, a message or a file.
URLs are shown and written only through :func:`public_url` (no user info, query or fragment), so a
token pasted into ``--base-url`` does not leak either.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from lldyn.errors import LldynError

DEFAULT_BASE_URL = "https://api.openai.com"


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment: safe to print and to write into output files."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def chat_completions_url(base_url: str | None, field: str = "base-url") -> str:
    """``http://h:p`` or ``http://h:p/v1`` (default ``$OPENAI_BASE_URL`` or OpenAI's) → ``.../v1/chat/completions``."""
    base = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LldynError(f"bad endpoint URL {public_url(base)!r}", field=field, expected="http(s)://HOST[:PORT][/v1]")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


def chat_completion(url: str, model: str, messages: list[dict[str, str]], *, api_key_env: str = "OPENAI_API_KEY",
                    max_tokens: int = 128, timeout: float = 120.0, what: str = "judge",
                    field: str = "judge") -> str:
    """The endpoint's greedy reply (temperature 0) to ``messages``: ``choices[0].message.content``.

    Any transport problem is one :class:`LldynError` naming the endpoint (``what``: "judge",
    "rephrase") by its public URL; an HTTP error names the status and, for 401/403, the key variable.
    """
    body = json.dumps({"model": model, "messages": messages, "temperature": 0,
                       "max_tokens": max_tokens}).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    where = public_url(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            payload: Any = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        hint = f" (is {api_key_env} set to a valid key?)" if err.code in (401, 403) else ""
        raise LldynError(f"{what} endpoint answered HTTP {err.code} {err.reason}{hint}", file=where,
                         field=field) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        reason = getattr(reason, "strerror", None) or reason
        raise LldynError(f"cannot reach {what} endpoint: {reason}", file=where, field="base-url",
                         expected="a running OpenAI-compatible server (--base-url)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LldynError(f"{what} endpoint did not answer JSON", file=where, field="base-url",
                         expected="an OpenAI-compatible chat completion") from None
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LldynError(f"unexpected answer from {what} endpoint (no choices[0].message.content)", file=where,
                         field="base-url", expected="an OpenAI-compatible chat completion") from None
    return content if isinstance(content, str) else ""


@dataclass
class ChatEndpoint:
    """An OpenAI-compatible endpoint as the judge and the rephraser use it: ``model`` at ``base_url`` (default
    ``$OPENAI_BASE_URL`` or OpenAI's), the key in ``$api_key_env``. ``what``/``flag`` name it in errors."""

    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_tokens: int = 128
    timeout: float = 120.0
    what: str = "judge"
    flag: str = "judge"
    url: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.model:
            raise LldynError("missing model name", field=self.flag, expected="openai:MODEL, e.g. openai:gpt-4o-mini")
        self.url = chat_completions_url(self.base_url)
        self.base_url = public_url(self.url)  # nothing that may hold a credential is kept

    def complete(self, messages: list[dict[str, str]]) -> str:
        return chat_completion(self.url, self.model, messages, api_key_env=self.api_key_env,
                               max_tokens=self.max_tokens, timeout=self.timeout, what=self.what, field=self.flag)
