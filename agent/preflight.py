"""Checks of a valid configuration against the world, for ``check-config`` and ``run``: the model's sidecar, the
secret files, the process environment. Problems exit 78 like a bad value does; warnings are printed or logged.

With ``[[assets]]`` an asset's unreadable model is only a warning: that asset is down and the others run (one
corrupt file must not stop a line of machines); its decision settings against the sidecar are still problems.

The settings model checks each value alone (and k <= n when both are set); only here are the values held against
the sidecar they complete (``EDGE_AGENT_DECISION__K=6`` with a model whose n is 5 would kill the pipeline at its
first window).
"""

from __future__ import annotations

import difflib
import stat
from pathlib import Path
from typing import Any, Mapping

from agent.config_checks import as_key
from agent.settings import ENV_PREFIX, Settings, known_env_names


class SecretFileError(OSError):
    """A password file that is configured but cannot be read: a configuration error (exit 78)."""


class SecretFileMissing(SecretFileError, FileNotFoundError):
    """A configured password file that does not exist."""


def read_secret_file(path: Path, env: str, warn: list[str] | None = None) -> str:
    """The secret in ``path`` (one line, the newline removed). SecretFileError naming ``env`` when the file is
    missing or unreadable; a warning in ``warn`` when group or others may read it."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"{env}={path}: not a regular file")
        text = path.read_text().rstrip("\r\n")
    except FileNotFoundError:
        raise SecretFileMissing(f"{env}={path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SecretFileError(f"{env}={path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if st.st_mode & 0o044 and warn is not None:
        warn.append(f"{env}={path} is readable by {'group and others' if st.st_mode & 0o004 and st.st_mode & 0o040 else 'others' if st.st_mode & 0o004 else 'its group'} "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it")
    return text


def check(settings: Settings, environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(problems, warnings): problems make ``run`` and ``check-config`` exit 78, warnings are only said."""
    problems: list[str] = []
    warnings: list[str] = unknown_environment(environ)
    if settings.assets:
        from agent.asset_settings import effective_settings

        for i, asset in enumerate(settings.assets):
            eff = effective_settings(settings, asset)  # load_settings has checked that it merges
            found = [f"assets[{i}] ({asset.id}).{as_key(p)}" for p in against_sidecar(eff)]
            # its model is unreadable: that asset is down, the others run; its settings against the sidecar (when
            # that could be read) are still problems: a fixed model file must not stop the gateway at its restart
            warnings += [f"{p} (asset {asset.id} will be down; the others run)" for p in found if ".model.path=" in p]
            problems += [p for p in found if ".model.path=" not in p]
    else:
        problems += against_sidecar(settings)
    problems += _replay_files(settings) + _serial_urls(settings)
    for path, env in _secret_files(settings):
        try:
            read_secret_file(path, env, warnings)
        except SecretFileError as e:
            problems.append(str(e))
    return problems, warnings


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """A warning for every EDGE_AGENT_* variable in the process environment that no setting knows (the env file
    refuses them; the environment may hold other tools' variables, so only a warning), with a "did you mean"."""
    known = set(known_env_names())
    out = []
    for key in sorted(environ):
        upper = key.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            hint = difflib.get_close_matches(upper, known, n=1)
            out.append(f"{key} in the environment is not a setting (ignored)" + (f"; did you mean {hint[0]}?" if hint else ""))
    return out


def _sources(settings: Settings, key: str) -> list[tuple[Any, str]]:
    """Each source of the configuration (the gateway's, or every asset's) with the name of its setting ``key``."""
    if settings.assets:
        return [(a.source, f"assets[{i}] ({a.id}).source.{key}") for i, a in enumerate(settings.assets)]
    return [(settings.source, f"{ENV_PREFIX}SOURCE__{key.upper()}")]


def _replay_files(settings: Settings) -> list[str]:
    """A replay whose recording is not a file, or whose header ``run`` refuses: ``check-config`` says so too."""
    sources = _sources(settings, "path")
    from agent.sources.replay import recording_channels

    out = []
    for src, name in sources:
        path = getattr(src, "path", None) if src.kind == "replay" else None
        if path is None:
            continue
        if not Path(path).is_file():
            out.append(f"{name}={path}: no such file (a recorded CSV to replay)")
            continue
        try:
            recording_channels(Path(path))  # its header: a time column, no column named twice
        except ValueError as e:
            out.append(f"{name}={e}")
        except OSError as e:
            out.append(f"{name}={path}: cannot read it ({e.strerror})")
    return out


def _serial_urls(settings: Settings) -> list[str]:
    """A serial port URL whose scheme pyserial does not know: ``run`` refuses it (the source is built), so
    ``check-config`` says so too, naming the variable."""
    out = []
    for src, name in _sources(settings, "port"):
        port = getattr(src, "port", None) if src.kind == "serial" else None
        if isinstance(port, str) and "://" in port:
            import serial

            try:
                serial.serial_for_url(port, do_not_open=True)
            except ValueError as e:
                out.append(f"{name}={port}: {e}")
    return out


def _secret_files(settings: Settings) -> list[tuple[Path, str]]:
    files = []
    if settings.mqtt.password_file is not None:
        files.append((Path(settings.mqtt.password_file), f"{ENV_PREFIX}MQTT__PASSWORD_FILE"))
    broker_file = getattr(settings.source, "broker_password_file", None)
    if broker_file is not None:
        files.append((Path(broker_file), f"{ENV_PREFIX}SOURCE__BROKER_PASSWORD_FILE"))
    return files


def against_sidecar(settings: Settings) -> list[str]:
    """The settings that do not fit the model they complete (the sidecar), one line each naming the variable."""
    from agent.bundled import default_model_path
    from agent.detectors import read_spec, resolve
    from agent.infer import ModelError, read_model_file

    given = settings.model.path or default_model_path()
    path = resolve(given)
    try:
        sc = read_spec(path, given)
    except ModelError as e:
        return [f"{ENV_PREFIX}MODEL__PATH={given}: {e}"]
    problems = []
    if path.suffix.lower() != ".json":  # the sidecar alone does not make a model: run checks its file too
        try:
            read_model_file(path, sc.sha256)  # type: ignore[union-attr]  # a TFLite sidecar
        except ModelError as e:
            problems.append(f"{ENV_PREFIX}MODEL__PATH={given}: {e}")
    if sc.kind == "generic" and settings.calibration.samples == 0 and not settings.calibration.duration:
        problems.append(f"{ENV_PREFIX}CALIBRATION__SAMPLES=0: the {sc.name} detector learns normal on site: "
                        f"teach-in cannot be off")
    d = settings.decision
    k, n = d.k or sc.decision.k, d.n or sc.decision.n
    if k > n:
        if d.k is not None:
            problems.append(f"{ENV_PREFIX}DECISION__K={d.k!r}: must not exceed n ({n}, "
                            f"{'EDGE_AGENT_DECISION__N' if d.n else 'the model sidecar decision.n'})")
        else:
            problems.append(f"{ENV_PREFIX}DECISION__N={d.n!r}: must be at least k ({k}, the model sidecar decision.k)")
    samples = settings.calibration.samples
    if samples and samples < sc.window.length + n:
        problems.append(f"{ENV_PREFIX}CALIBRATION__SAMPLES={samples!r}: must cover at least the window and the "
                        f"debounce ({sc.window.length} + {n} readings) for teach-in to fit a threshold")
    return problems

