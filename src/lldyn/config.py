"""Typed configuration: frozen dataclasses, one builder from TOML files and CLI flags.

Every command's knobs live in a frozen dataclass with defaults; ``__post_init__`` validates
values. :func:`build_config` is the one parser that merges, in increasing priority, the
dataclass defaults, a TOML file and explicit overrides (CLI flags), checking names and types and
raising :class:`~lldyn.errors.LldynError` naming the file and field on any mistake. The resolved
config is written to the run directory with :func:`config_to_dict`.
"""
from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from lldyn.errors import LldynError

C = TypeVar("C")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, field: str, file: str | None) -> Any:
    """Check ``value`` against annotation ``tp`` (int/float/str/bool/Optional/tuple/Literal/dataclass)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, field, file)
    if origin is typing.Literal:
        if value not in args:
            raise LldynError(f"unknown value {value!r}", file=file, field=field,
                             expected="one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (tuple, list):
        if isinstance(value, str):  # a flag's comma-separated list
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise LldynError(f"bad value {value!r}", file=file, field=field, expected="a list")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, field, file) for v in value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise LldynError(f"bad value {value!r}", file=file, field=field, expected="a table")
        return build_config(tp, value, file=file, prefix=field + ".")
    scalar = _SCALARS.get(tp) if isinstance(tp, type) else None
    if scalar is None:  # Any, and annotations this parser does not know, pass through
        return value
    parse, expected = scalar
    try:
        return parse(value)
    except (TypeError, ValueError):
        raise LldynError(f"bad value {value!r}", file=file, field=field, expected=expected) from None


def _coerce_union(value: Any, args: tuple[Any, ...], field: str, file: str | None) -> Any:
    """The first member of a union (``X | None``, ``int | str``) that takes ``value``; None when allowed."""
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, field, file)
        except LldynError:
            pass
    raise LldynError(f"bad value {value!r}", file=file, field=field,
                     expected=" or ".join(_type_name(a) for a in args))


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ValueError(value)


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):  # True is an int to Python, never to a config
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return int(str(value))


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)


def _parse_str(value: Any) -> str:
    if not isinstance(value, (str, Path)):
        raise TypeError(value)
    return str(value)


# A scalar annotation → (parser raising TypeError/ValueError on a bad value, what the error expects).
_SCALARS: dict[Any, tuple[Callable[[Any], Any], str]] = {
    bool: (_parse_bool, "true or false"),
    int: (_parse_int, "an integer"),
    float: (_parse_float, "a number"),
    str: (_parse_str, "a string"),
}


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning I/O and syntax problems into one clear :class:`LldynError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LldynError("config file not found", file=str(path), expected="a TOML file of settings") from None
    except (OSError, UnicodeDecodeError) as err:
        raise LldynError(f"cannot read config file: {err}", file=str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        line = getattr(err, "lineno", None)
        msg = getattr(err, "msg", str(err))
        where = re.search(r"\s*\(at line (\d+), column (\d+)\)", msg)  # Python < 3.14 has no err.lineno
        if line is None and where:
            line, msg = int(where.group(1)), msg[:where.start()] + f" at column {where.group(2)}"
        raise LldynError(f"invalid TOML: {msg}", file=str(path), line=line, expected="TOML key = value lines") from None


def build_config(
    cls: type[C],
    values: Mapping[str, Any] | None = None,
    *,
    file: str | None = None,
    prefix: str = "",
) -> C:
    """Build the frozen dataclass ``cls`` from ``values`` (unknown keys and bad types are refused).

    ``__post_init__`` of ``cls`` runs the value checks (e.g. ``beta > 0``); a ``ValueError`` it
    raises is turned into an :class:`LldynError` naming ``file``.
    """
    try:
        return _build(cls, dict(values or {}), file, prefix)
    except LldynError as err:
        if file is None or err.line is not None or not err.field:
            raise
        # name the line of a TOML file that holds the setting, when it is there (a flag's value is not)
        raise LldynError(err.message, file=err.file or file, line=toml_line(file, err.field), field=err.field,
                         expected=err.expected) from None


def _build(cls: type[C], values: dict[str, Any], file: str | None, prefix: str) -> C:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise LldynError(
            f"unknown setting '{prefix}{unknown[0]}'", file=file, field=prefix + unknown[0],
            expected="one of " + ", ".join(sorted(fields)),
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k, file) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except LldynError as err:
        if err.file is None and file is not None:
            raise LldynError(err.message, file=file, field=prefix + (err.field or "") if err.field else None,
                             expected=err.expected) from None
        raise
    except (TypeError, ValueError) as err:
        raise LldynError(str(err), file=file) from None


def toml_line(file: str | Path, field: str) -> int | None:
    """The line of ``file`` that sets ``field`` (``key`` or ``section.key``), or None (not a TOML file, or not
    set there). A plain scan of ``[section]`` headers and ``key =`` lines: enough to point at the setting."""
    path = Path(file)
    if path.suffix != ".toml" or not path.is_file():
        return None
    section, _, key = field.rpartition(".")
    current = ""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for number, line in enumerate(lines, 1):
        header = re.match(r"\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if header:
            current = header.group(1).strip()
        elif current == section and re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
            return number
    return None


def load_config(
    cls: type[C],
    toml_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    section: str | None = None,
) -> C:
    """Defaults < TOML file (optionally one ``[section]`` of it) < ``overrides`` (None values ignored)."""
    values: dict[str, Any] = {}
    file = None
    if toml_path is not None:
        file = str(toml_path)
        data = read_toml(toml_path)
        if section is not None:
            data = data.get(section, {})
        values.update(data)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_config(cls, values, file=file)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [convert(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return convert(config)


def check(condition: bool, field: str, message: str, expected: str | None = None) -> None:
    """Validation helper for ``__post_init__``: raise an error naming ``field``."""
    if not condition:
        raise LldynError(message, field=field, expected=expected)
