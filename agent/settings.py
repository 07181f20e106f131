"""Configuration: pydantic-settings models, the only place where configuration is untyped text.

Every setting is an environment variable ``EDGE_AGENT_<FIELD>``, nested with ``__``
(``EDGE_AGENT_MQTT__HOST``). The agent reads its env file itself (``--env-file``, default
``/etc/edge-agent/agent.env`` when it exists) so that an unknown ``EDGE_AGENT_*`` key in the file is an error
rather than a silently ignored typo; the process environment overrides the file. The sections are in
``agent.settings_sections``; ``[[assets]]`` (configuration file only) in ``agent.asset_settings``.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.asset_settings import AssetSettings
from agent.modbus_config import ModbusSettings
from agent.settings_sections import (  # noqa: F401 - the sections are part of this module's interface
    COMMAND_NAMES, DEFAULT_ENV_FILE, ENV_PREFIX, EX_CONFIG, FILE_ONLY, SOURCE_KINDS, AdviceSettings, AlertSettings,
    CalibrationSettings, CleaningSettings, CommandSettings, DecisionSettings, ModbusSourceSettings, ModelSettings,
    MqttSettings, MqttSourceSettings, OutboxSettings, ReplaySourceSettings, SerialSourceSettings, SourceSettings,
    _default_state_dir, parse_duration,
)


class Settings(BaseSettings):
    """All of edge-agent's settings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", validate_default=True,
        nested_model_default_partial_update=True, env_ignore_empty=True, allow_inf_nan=False,
    )

    config_file: Path | None = Field(None, description="TOML configuration file (README: configuration file; deploy/agent.toml.example); empty = /etc/edge-agent/agent.toml when it exists. Env variables and the env file override it.")
    device_id: str = Field(default_factory=socket.gethostname, min_length=1, pattern=r"^[^/+#]+$", description="This gateway's id in topics and messages; default: the host name.")
    state_dir: Path = Field(default_factory=_default_state_dir, description="Outbox and calibration live here; default: $STATE_DIRECTORY, /var/lib/edge-agent for root, else ~/.local/state/edge-agent.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level on stderr: DEBUG, INFO, WARNING or ERROR.")
    summary_interval_s: float = Field(300.0, gt=0, description="Seconds of data time between summaries.")
    stats_interval_s: float = Field(300.0, ge=1, description="Seconds between stats messages (QoS 0).")
    stall_s: float = Field(20.0, ge=1, description="A stage without progress for this long stops the systemd watchdog pings (and is reported).")
    clock_sync_required: bool = Field(True, description="Report degraded while the system clock is not NTP-synchronised (live sources only); false for gateways that run without time sync on purpose.")
    drain_timeout_s: float = Field(10.0, ge=0, description="On shutdown (end of a replay, SIGTERM): give up draining the outbox after this long without progress; what is left is sent on the next start.")
    queue_size: int = Field(10000, ge=10, description="Readings buffered between source and pipeline; a live source drops the oldest past this.")
    source: SourceSettings = Field(default_factory=ReplaySourceSettings, description="")
    model: ModelSettings = Field(default_factory=ModelSettings)
    decision: DecisionSettings = Field(default_factory=DecisionSettings)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    commands: CommandSettings = Field(default_factory=CommandSettings)
    cleaning: CleaningSettings = Field(default_factory=CleaningSettings)
    modbus: ModbusSettings = Field(default_factory=ModbusSettings)
    advice: AdviceSettings = Field(default_factory=AdviceSettings)
    assets: list[AssetSettings] = Field(default_factory=list)  # configuration file only: [[assets]]

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class ConfigError(Exception):
    """Invalid configuration: one human-readable line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def env_name(loc: tuple[Any, ...]) -> str:
    """The environment variable for a pydantic error location (the union tag is not part of the name)."""
    return ENV_PREFIX + "__".join(str(p).upper() for p in written_loc(loc))


def written_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pydantic error location as the user wrote it: without the source union's tag, which pydantic puts after
    ``source`` (``assets.3.source.replay.speed`` is ``assets.3.source.speed`` in the file)."""
    return tuple(p for i, p in enumerate(loc) if not (i and loc[i - 1] == "source" and p in SOURCE_KINDS))


def _walk(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, Any]]:
    for name, field in model.model_fields.items():
        ann = field.annotation
        if name in FILE_ONLY and model is Settings:
            continue
        if name == "source":
            seen: set[str] = set()
            for cls in SOURCE_KINDS.values():
                for env, f in _walk(cls, f"{prefix}SOURCE__"):
                    if env not in seen:
                        seen.add(env)
                        yield env, f
            continue
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _walk(ann, f"{prefix}{name.upper()}__")
        else:
            yield f"{prefix}{name.upper()}", field


def known_env_names() -> list[str]:
    """Every EDGE_AGENT_* variable the settings model understands."""
    return [env for env, _ in _walk(Settings, ENV_PREFIX)]


def secret_env_names() -> set[str]:
    return {env for env, f in _walk(Settings, ENV_PREFIX) if f.annotation in (SecretStr, SecretStr | None)}


def _read_env_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """The file's NAME=value pairs, and a problem naming each line that is none of NAME=value, a comment or blank
    (python-dotenv would skip it in silence: a setting lost to a typo). The line's text is not shown (a secret)."""
    from dotenv import dotenv_values  # python-dotenv comes with pydantic-settings
    from dotenv.parser import parse_stream

    with open(path, encoding="utf-8") as fh:
        bad = []
        for b in parse_stream(fh):
            if b.error or (b.key is not None and b.value is None):
                text = b.original.string
                lead = text[: len(text) - len(text.lstrip())]  # blank lines the parser took with it
                bad.append(f"{path} line {b.original.line + lead.count(chr(10))}: not NAME=value "
                           "(each line must be NAME=value, a # comment or blank)")
    quiet = logging.getLogger("dotenv.main")  # it logs each bad line again, raw: said above, once, by number
    was, quiet.disabled = quiet.disabled, bool(bad)
    try:
        return {k: v for k, v in dotenv_values(path).items() if v is not None}, bad
    finally:
        quiet.disabled = was


def _present(path: Path) -> bool:
    """``path`` exists, or may not be looked at (then reading it says why); not a dangling link."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def load_settings(env_file: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Settings from the env file and the environment (environment wins), or ConfigError naming each problem."""
    environ = dict(os.environ if environ is None else environ)
    explicit = env_file is not None
    if env_file is None and _present(DEFAULT_ENV_FILE):
        env_file = DEFAULT_ENV_FILE
    file_values: dict[str, str] = {}
    problems: list[str] = []
    if env_file is not None:
        named = f"--env-file {env_file}" if explicit else f"env file {env_file}"
        try:
            mode = env_file.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise ConfigError([f"{named}: no such file"]) from None
        except OSError as e:  # a directory on the way that may not be searched
            raise ConfigError([f"{named}: cannot read ({e.strerror or e})"]) from None
        if not stat.S_ISREG(mode):  # a directory, or a pipe or device (read twice below: a pipe would hang)
            raise ConfigError([f"{named}: " + ("is a directory, not an env file" if stat.S_ISDIR(mode) else
                                               "not a regular file (a pipe, socket or device)")])
        try:
            file_values, problems = _read_env_file(env_file)  # a bad line hides none of the other problems
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError([f"{named}: cannot read ({getattr(e, 'strerror', None) or e})"]) from e
    known = set(known_env_names())
    secrets = secret_env_names()
    for key, value in file_values.items():
        if key.upper().startswith(ENV_PREFIX) and key.upper() not in known:
            hint = difflib.get_close_matches(key.upper(), known, n=1)
            shown = "***" if any(s in key.upper() for s in ("PASSWORD", "SECRET", "TOKEN")) else value
            problems.append(
                f"{key}={shown!s}: unknown setting in {env_file}" + (f" (did you mean {hint[0]}?)" if hint else "")
            )
    merged = {k.upper(): v for k, v in file_values.items() if k.upper() in known}
    merged.update({k.upper(): v for k, v in environ.items() if k.upper() in known})
    from agent import config_file  # the TOML file: the lowest layer, under the env file and the environment

    path, _ = config_file.find(merged)
    cfg = None
    if path is not None:
        try:
            cfg = config_file.load(path, known)
        except ValueError as e:
            raise ConfigError(problems + [str(e)]) from None
        problems += cfg.problems
        merged = {**cfg.flat, **merged}
    try:
        settings = _build(merged, cfg.file_only if cfg else {})
    except ValidationError as e:
        for err in e.errors():
            blamed = (err.get("ctx") or {}).get("error")
            if isinstance(blamed, config_file.KeyProblem):  # a whole table's check names one key in it
                err = {**err, "loc": (*err["loc"], *blamed.key), "input": blamed.value, "msg": str(blamed)}
            err = {**err, "loc": written_loc(err["loc"])}
            name = env_name(err["loc"])
            if err["type"] == "source_kind":
                name = ENV_PREFIX + "SOURCE__KIND"
            from_file = cfg.describe(err["loc"], name, err.get("input"), err["msg"]) if cfg else None
            if from_file is not None and (name not in merged or merged[name] == cfg.flat.get(name)):  # type: ignore[union-attr]
                problems.append(from_file)
                continue
            raw = merged.get(name, err.get("input"))
            if name in secrets:
                raw = "***"
            if isinstance(raw, dict) or (raw is None and name not in merged):
                shown = "(not set)"
            else:
                shown = repr(str(raw)) if raw is not None else "(not set)"
            problems.append(f"{name}={shown}: {err['msg']}")
    if not problems:
        from agent.config_checks import consistency_problems

        problems += consistency_problems(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def _build(values: dict[str, str], file_only: dict[str, Any] | None = None) -> Settings:
    # Settings reads os.environ itself; give it exactly the merged view instead.
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
    try:
        for k in saved:
            del os.environ[k]
        os.environ.update(values)
        return Settings(**(file_only or {}))
    finally:
        for k in values:
            os.environ.pop(k, None)
        os.environ.update(saved)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets shown as '***'."""
    data = settings.model_dump(mode="json")

    def mask(d: Any, model: Any) -> Any:
        if isinstance(d, dict) and isinstance(model, BaseModel):
            out = {}
            for k, v in d.items():
                attr = getattr(model, k, None)
                if isinstance(attr, SecretStr):
                    out[k] = "***"
                else:
                    out[k] = mask(v, attr)
            return out
        return d

    return mask(data, settings)


def flat_env(settings: Settings) -> dict[str, str]:
    """The effective configuration as EDGE_AGENT_* = value lines (secrets masked)."""
    out: dict[str, str] = {}

    def walk(d: Any, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k.upper()}__")
            else:
                if isinstance(v, list):
                    v = ",".join(map(str, v))
                out[f"{prefix}{k.upper()}"] = "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    walk({k: v for k, v in masked_dump(settings).items() if k not in FILE_ONLY}, ENV_PREFIX)
    return out
