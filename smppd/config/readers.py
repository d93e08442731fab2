"""The typed readers every section is parsed with, and the one error type.

Every reader takes the table, the dotted key of that table and the name inside
it, so a problem always comes out as ``route.life.port: must be an integer from
1 to 65535``: the person reading it is an admin at a terminal, not a developer at
a debugger. A reader's ``default`` is the typed config class's own default
(``SmppRouteConfig.window``), never a literal of its own, so each default is
written once.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Iterator, Mapping


class ConfigError(ValueError):
    """A config problem, always tied to the key that has it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


MISSING: Any = object()  # no default: the key must be there
MIN_KEY_LENGTH = 24  # characters of a handler_key or callback_key: not guessable


def read_toml(path: str | Path) -> dict[str, Any]:
    """The decoded file, or a ConfigError naming the file (not found, not TOML)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), f"not valid TOML: {e}") from None


def read_env_file(path: str | Path) -> dict[str, str]:
    """``NAME=value`` lines of a systemd EnvironmentFile (comments, blank lines and quotes allowed)."""
    out = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ConfigError(str(path), f"cannot read: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name.strip()):
            raise ConfigError(f"{path}:{n}", "must be NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name.strip()] = value
    return out


def field_names(cls: type, *, but: frozenset[str] = frozenset()) -> set[str]:
    """The keys a table may have: the typed class's fields (less those the parser sets itself)."""
    return {f.name for f in dataclasses.fields(cls)} - but


def only(t: Mapping[str, Any], key: str, allowed: set[str]) -> None:
    """Refuse a key we do not know: a typo must not silently leave the default in force."""
    for k in t:
        if k not in allowed:
            where = f"{key}.{k}" if key else k
            raise ConfigError(where, f"unknown key (known: {', '.join(sorted(allowed))})")


def section(t: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """A required top-level ``[name]`` table."""
    v = t.get(name)
    if v is None:
        raise ConfigError(name, "missing section")
    if not isinstance(v, dict):
        raise ConfigError(name, "must be a table")
    return v


def tables(items: Any, name: str, cls: type) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(key, table) of each [[name]] entry, checked for unknown keys against ``cls``."""
    if not isinstance(items, list):
        raise ConfigError(name, f"must be an array of tables: [[{name}]]")
    for i, t in enumerate(items):
        key = f"{name}[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(key, "must be a table")
        only(t, key, field_names(cls))
        yield key, t


def get(t: Mapping[str, Any], key: str, name: str, default: Any) -> Any:
    v = t.get(name, default)
    if v is MISSING:
        raise ConfigError(f"{key}.{name}", "missing")
    return v


def string(t: Mapping[str, Any], key: str, name: str, default: Any = MISSING) -> Any:
    """A string; a required one must not be empty."""
    v = get(t, key, name, default)
    if v is default and default is not MISSING:
        return v
    if not isinstance(v, str):
        raise ConfigError(f"{key}.{name}", f"must be a string, got {type(v).__name__}")
    if default is MISSING and not v:
        raise ConfigError(f"{key}.{name}", "must not be empty")
    return v


def choice(t: Mapping[str, Any], key: str, name: str, choices: tuple[str, ...], default: Any = MISSING) -> Any:
    """One of ``choices`` (or the default, which may be None)."""
    v = string(t, key, name, default)
    if v is not None and v not in choices:
        raise ConfigError(f"{key}.{name}", f"must be one of {', '.join(choices)}, got {v!r}")
    return v


ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def secret(t: Mapping[str, Any], key: str, name: str, default: Any = MISSING) -> Any:
    """A secret, given inline or as ``"${NAME}"``: read from the environment.

    The reference form keeps secrets out of config.toml (and out of the unit
    files): systemd passes them from a root-only ``EnvironmentFile=``.
    """
    v = string(t, key, name, default)
    m = ENV_REF.match(v) if isinstance(v, str) else None
    if m is None:
        return v
    value = os.environ.get(m[1])
    if not value:
        raise ConfigError(f"{key}.{name}", f"environment variable {m[1]} is not set (see EnvironmentFile=)")
    return value


def url(t: Mapping[str, Any], key: str, name: str, default: Any = MISSING) -> Any:
    """An http(s) URL, always ending in ``/`` (endpoints are joined with method names)."""
    if name not in t and default is not MISSING:
        return default
    v = string(t, key, name)
    if not v.startswith(("http://", "https://")):
        raise ConfigError(f"{key}.{name}", f"must be an http(s) URL, got {v!r}")
    return v if v.endswith("/") else v + "/"


def integer(t: Mapping[str, Any], key: str, name: str, default: Any = MISSING, *, low: int, high: int) -> int:
    v = get(t, key, name, default)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise ConfigError(f"{key}.{name}", f"must be an integer from {low} to {high}, got {v!r}")
    return v


def boolean(t: Mapping[str, Any], key: str, name: str, default: Any = MISSING) -> bool:
    v = get(t, key, name, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{key}.{name}", f"must be true or false, got {v!r}")
    return v


def number(t: Mapping[str, Any], key: str, name: str, default: Any = MISSING, *, low: float) -> float:
    v = get(t, key, name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low:
        raise ConfigError(f"{key}.{name}", f"must be a number ≥ {low}, got {v!r}")
    return float(v)
