"""The TOML configuration file: the same settings as the env variables, in nested tables, plus what only a file
can hold (the Modbus register maps).

``EDGE_AGENT_CONFIG_FILE`` names it (default ``/etc/edge-agent/agent.toml`` when it exists). A key is an env
variable's name without the prefix, lower case, its ``__`` levels as tables: ``EDGE_AGENT_MQTT__HOST`` is ``host``
in ``[mqtt]``. The file is the lowest layer: the env file and then the process environment override it, so an
env-only configuration works unchanged and one variable can override one key for a test. Values are validated by
the same pydantic models as the env variables (the file's values go in as the same text an env variable would
carry), and a problem is one line naming the key path and, where it can be found, its line in the file.

Tables that exist only in the file (``FILE_ONLY``: ``[modbus]`` now, ``[[assets]]`` next) are handed to the
settings model as they are.
"""

from __future__ import annotations

import datetime
import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

ENV_PREFIX = "EDGE_AGENT_"
CONFIG_FILE_ENV = "EDGE_AGENT_CONFIG_FILE"
DEFAULT_CONFIG_FILE = Path("/etc/edge-agent/agent.toml")
FILE_ONLY = ("modbus", "assets")  # top-level tables with no env variables


class KeyProblem(ValueError):
    """A check of a whole table (a model validator) that blames one key inside it: ``key`` its path from the
    table, ``value`` its value; the problem line then names that key and its line, as a field's error does."""

    def __init__(self, key: tuple[str, ...], value: Any, message: str):
        super().__init__(message)
        self.key, self.value = key, value


@dataclass
class ConfigFile:
    """A parsed configuration file: env-style values, file-only tables, and where each key is."""

    path: Path
    text: str
    flat: dict[str, str] = field(default_factory=dict)  # env name -> value as env text
    file_only: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, tuple[str, ...]] = field(default_factory=dict)  # env name -> key path
    problems: list[str] = field(default_factory=list)

    def line_of(self, parts: Iterable[str]) -> int | None:
        """The line of the key ``parts`` (or of its nearest enclosing key or table), None when not found."""
        return locate(self.text, tuple(parts))

    def where(self, parts: Iterable[str]) -> str:
        parts = tuple(parts)
        line = self.line_of(parts)
        return f"{self.path}" + (f" line {line}" if line else "")

    def describe(self, loc: tuple[Any, ...], env: str, value: Any, msg: str) -> str | None:
        """The problem line for a validation error whose value came from this file, else None."""
        if loc and loc[0] in FILE_ONLY:
            parts = tuple(str(p) for p in loc)
        elif env in self.origins:
            parts = self.origins[env]
        else:
            return None
        shown = "" if isinstance(value, (dict, list)) or value is None else f" = {value!r}"
        return f"{key_path(parts)}{shown} ({self.where(parts)}): {msg}"


def key_path(parts: Iterable[str]) -> str:
    """``modbus.devices."meter 1".unit``: TOML's dotted key, quoting parts that need it."""
    return ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else f'"{p}"' for p in parts)


def find(values: Mapping[str, str]) -> tuple[Path | None, bool]:
    """The configuration file to read (explicitly named, or the default when it exists) and whether named."""
    named = values.get(CONFIG_FILE_ENV, "").strip()
    if named:
        return Path(named), True
    return (DEFAULT_CONFIG_FILE, False) if DEFAULT_CONFIG_FILE.exists() else (None, False)


def load(path: Path, known: Iterable[str]) -> ConfigFile:
    """Read and flatten ``path``; raises ValueError (one line, with the line number tomllib gives) when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{CONFIG_FILE_ENV}={path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{CONFIG_FILE_ENV}={path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    cfg = ConfigFile(path=path, text=text)
    names = set(known)
    for key, value in data.items():
        if key in FILE_ONLY:
            cfg.file_only[key] = value
        else:
            _flatten(cfg, (key,), value, names)
    return cfg


def _flatten(cfg: ConfigFile, parts: tuple[str, ...], value: Any, known: set[str]) -> None:
    env = ENV_PREFIX + "__".join(p.upper() for p in parts)
    if env == CONFIG_FILE_ENV:
        cfg.problems.append(f"{key_path(parts)} ({cfg.where(parts)}): the file cannot name itself; set {CONFIG_FILE_ENV} in the environment or the env file")
        return
    if isinstance(value, dict):
        if env in known:
            cfg.problems.append(f"{key_path(parts)} ({cfg.where(parts)}): must be a value, not a table")
            return
        if not any(k.startswith(env + "__") for k in known):
            cfg.problems.append(_unknown(cfg, parts, known))
            return
        for k, v in value.items():
            _flatten(cfg, (*parts, k), v, known)
        return
    if env not in known:
        cfg.problems.append(_unknown(cfg, parts, known))
        return
    text = _as_env_text(value)
    if text is None:
        cfg.problems.append(f"{key_path(parts)} = {value!r} ({cfg.where(parts)}): must be a string, number, boolean or list of them")
        return
    cfg.flat[env] = text
    cfg.origins[env] = parts


def _unknown(cfg: ConfigFile, parts: tuple[str, ...], known: set[str]) -> str:
    keys = {".".join(k[len(ENV_PREFIX):].lower().split("__")) for k in known}
    hint = difflib.get_close_matches(".".join(parts), keys, n=1)
    return (f"{key_path(parts)} ({cfg.where(parts)}): unknown setting"
            + (f" (did you mean {key_path(hint[0].split('.'))}?)" if hint else ""))


def _as_env_text(value: Any) -> str | None:
    """The text an env variable would carry for ``value`` (lists comma-separated), None for what has none."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        if any("," in str(v) for v in value):
            return None
        return ",".join(str(v) for v in value)
    if isinstance(value, (datetime.date, datetime.time)):
        return None
    return None


_HEADER = re.compile(r"^\s*\[\[?\s*(.+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r'^\s*((?:"[^"]*"|\'[^\']*\'|[A-Za-z0-9_.\- ]+?))\s*=')


def _split_key(text: str) -> tuple[str, ...]:
    """A dotted TOML key split into its parts, quotes removed (enough for locating lines, not a parser)."""
    return tuple(p.strip().strip("\"'") for p in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', text))


def _resolve(parts: tuple[str, ...], arrays: dict[tuple[str, ...], int]) -> tuple[str, ...]:
    """A table header's key with the index of the current entry of each array of tables in it:
    ``assets.decision`` after the third ``[[assets]]`` is ``assets.2.decision``."""
    out: list[str] = []
    for p in parts:
        out.append(p)
        if tuple(out) in arrays:
            out.append(str(arrays[tuple(out)] - 1))
    return tuple(out)


def locate(text: str, parts: tuple[str, ...]) -> int | None:
    """1-based line of the key ``parts`` in TOML ``text``, or of the nearest enclosing key or table. An array of
    tables' entries are numbered as in a validation error's location (``assets.1.id``: the second ``[[assets]]``)."""
    best, best_len = None, 0
    table: tuple[str, ...] = ()
    arrays: dict[tuple[str, ...], int] = {}  # array of tables (its entries' indices resolved) -> entries so far
    for no, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m and not _KEY.match(line):
            key = _split_key(m.group(1))
            if line.lstrip().startswith("[["):
                array = _resolve(key[:-1], arrays) + key[-1:]
                arrays[array] = arrays.get(array, 0) + 1
                table = array + (str(arrays[array] - 1),)
            else:
                table = _resolve(key, arrays)
            path = table
        else:
            k = _KEY.match(line)
            if not k:
                continue
            path = table + _split_key(k.group(1))
        n = 0
        while n < min(len(path), len(parts)) and path[n] == parts[n]:
            n += 1
        if n == len(path) and n > best_len:
            best, best_len = no, n
    return best
