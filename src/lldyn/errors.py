"""The one user-facing exception type.

Everything a user can get wrong (a data file, a flag, a model name, a run directory) raises
:class:`LldynError` naming *where* (file, line, field) and *what was expected*. The CLI catches it,
prints one line and exits with status 2. Any other exception is a bug in lldyn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class LldynError(Exception):
    """A problem with the user's input, reported in one line.

    Args:
        message: what is wrong, in plain words.
        file: the file (or run directory, or data set name) the problem is in.
        line: 1-based line number inside ``file`` (JSONL row, TOML line, ...).
        field: the field / key / flag that is wrong.
        expected: what would have been accepted.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        self.expected = expected
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file + (f":{self.line}" if self.line is not None else "")
        parts = [p for p in (where, f"field '{self.field}'" if self.field else "") if p]
        text = (", ".join(parts) + ": " if parts else "") + self.message
        if self.expected:
            text += f" (expected {self.expected})"
        return text


@dataclass(frozen=True)
class Where:
    """A location in a user file, carried along so later checks can still name it."""

    file: str | None = None
    line: int | None = None

    def error(self, message: str, field: str | None = None, expected: str | None = None) -> LldynError:
        return LldynError(message, file=self.file, line=self.line, field=field, expected=expected)


def require(condition: Any, message: str, **where: Any) -> None:
    """Raise :class:`LldynError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise LldynError(message, **where)
