"""Small file helpers: atomic writes (temp file + rename) and append-only JSONL.

Nothing lldyn writes is ever left half-written: a crash leaves either the old file or the new one.
"""
from __future__ import annotations

import io
import json
import os
import sys
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


def save_figure(fig: Any, path: str | Path, **savefig: Any) -> Path:
    """Write a matplotlib figure as PNG at ``path`` atomically (folders made as needed) and release it.

    The one figure writer of lldyn: works for ``matplotlib.figure.Figure`` objects (an Agg canvas is
    attached) and for pyplot figures (closed afterwards). ``savefig`` keywords go to ``Figure.savefig``.
    """
    # matplotlib is imported here: it is slow to import, and most of lldyn writes no figure.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    atomic_write_bytes(path, buf.getvalue())
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    return Path(path)


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
    payload = "".join(dumps(r) + "\n" for r in rows).encode("utf-8")
    if not payload:
        return
    try:
        with open(path, "ab") as fh:
            size = fh.tell()
            try:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            except OSError:
                fh.truncate(size)  # a failed append (disk full) must not leave a torn row behind
                raise
    except OSError as err:
        raise LldynError(f"cannot append: {err.strerror}", file=str(path)) from None


def read_jsonl(path: str | Path, strict: bool = True, torn_tail: bool = True) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file, streamed line by line (the file is never held in memory whole).

    ``torn_tail``: a malformed *last* line without a newline is a crash mid-append in a file lldyn
    appends to (``metrics.jsonl``, the probe table) and is skipped; pass False for files written
    whole (atomically), where it is an error like any other. ``strict`` False skips malformed lines.
    """
    return (row for _, row in read_jsonl_lines(path, strict, torn_tail))


def read_jsonl_lines(path: str | Path, strict: bool = True, torn_tail: bool = True
                     ) -> Iterator[tuple[int, Any]]:
    """``(line number, row)`` of a JSONL file (blank lines skipped); see :func:`read_jsonl`."""
    path = Path(path)
    with open(path, "rb") as fh:
        line = fh.readline()
        lineno = 1
        while line:
            following = fh.readline()
            if line.strip():
                try:
                    row = json.loads(line.decode("utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    if torn_tail and not following and not line.endswith(b"\n"):
                        return  # torn tail from an interrupted append
                    if strict:
                        what = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else "malformed JSON line"
                        raise LldynError(what, file=str(path), line=lineno,
                                         expected="one JSON object per line") from None
                else:
                    yield lineno, row
            line, lineno = following, lineno + 1
