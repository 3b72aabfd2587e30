"""Small file helpers: atomic writes (temp file + rename) and append-only JSONL.

Nothing lldyn writes is ever left half-written: a crash leaves either the old file or the new one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from lldyn.errors import LldynError


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> str:
    """Compact JSON (NaN/inf allowed, tensors and numpy scalars as numbers)."""
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise LldynError(f"cannot write: {err.strerror}", file=str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise LldynError(f"cannot write: {err.strerror}", file=str(path)) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, default=_json_default, ensure_ascii=False, indent=2) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write all ``rows`` as JSONL atomically; returns the number of rows."""
    lines = [dumps(r) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def append_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Append rows to a JSONL file in one write + fsync (rows are whole lines; a torn last line from
    a crash is dropped by :func:`read_jsonl`)."""
    payload = "".join(dumps(r) + "\n" for r in rows)
    if not payload:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path, strict: bool = True) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file written by lldyn. A torn *last* line (crash mid-append) is skipped."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        lines = fh.readlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) and not line.endswith("\n"):
                return  # torn tail from an interrupted append
            if strict:
                raise LldynError("malformed JSON line", file=str(path), line=i, expected="one JSON object per line") from None
