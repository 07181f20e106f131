"""Command line: ``edge-agent run | check-config | version | config-reference | model info | calibrate``.

Thin: parse arguments → load settings → call into the package → exit code. A configuration or model problem
exits 78 (EX_CONFIG) with one line per problem, so systemd's ``RestartPreventExitStatus=78`` does not loop.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from agent import __version__
from agent.settings import EX_CONFIG, ConfigError, Settings, flat_env, load_settings

log = logging.getLogger("agent")

EX_TEMPFAIL = 75  # sysexits: try again later (calibrate --reset while an agent runs on the state directory)


def setup_logging(level: str) -> None:
    """Log lines on stderr without timestamps (journald adds them); control characters in a message are escaped
    (agent/logsafe.py), so no value from outside can forge a line."""
    from agent.logsafe import SafeFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("paho").setLevel(max(logging.getLevelName(level), logging.WARNING))


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.env_file) if args.env_file else None)


def _config_fail(e: ConfigError) -> int:
    for line in e.problems:
        print(f"config error: {line}", file=sys.stderr)
    return EX_CONFIG


def _checked_settings(args: argparse.Namespace) -> tuple[Settings, list[str]]:
    """The settings, checked against the model sidecar, secret files and environment (agent/preflight.py);
    ConfigError with every problem, else the warnings to show."""
    import os

    from agent import preflight

    settings = _settings(args)
    problems, warnings = preflight.check(settings, os.environ)
    if problems:
        raise ConfigError(problems)
    return settings, warnings


def cmd_run(args: argparse.Namespace) -> int:
    from agent.app import Agent
    from agent.files import StateDirError
    from agent.infer import ModelError
    from agent.preflight import SecretFileError

    try:
        settings, warnings = _checked_settings(args)
    except ConfigError as e:
        return _config_fail(e)
    setup_logging(settings.log_level)
    for w in warnings:
        log.warning("config: %s", w)
    try:
        agent = Agent(settings)
    except ModelError as e:
        print(f"model error: {e}", file=sys.stderr)
        return EX_CONFIG
    except StateDirError as e:
        print(f"config error: {e} (EDGE_AGENT_STATE_DIR)", file=sys.stderr)
        return EX_CONFIG
    except (FileNotFoundError, ValueError, SecretFileError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return EX_CONFIG
    except PermissionError as e:
        print(f"config error: {e} (EDGE_AGENT_STATE_DIR must be writable by the agent's user)", file=sys.stderr)
        return EX_CONFIG
    return agent.run()


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings, warnings = _checked_settings(args)
    except ConfigError as e:
        return _config_fail(e)
    for w in warnings:
        print(f"config warning: {w}", file=sys.stderr)
    if args.json:
        from agent.settings import masked_dump

        print(json.dumps(masked_dump(settings), indent=2))
    else:
        for k, v in flat_env(settings).items():
            print(f"{k}={v}")
        from agent.reference_toml import render_file_only

        text = render_file_only(settings)
        if text:
            print("# configuration file only (no env variables):")
            print(text, end="")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"edge-agent {__version__}")
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from agent.reference import render_env_example, render_markdown
    from agent.reference_toml import render_toml_example

    sys.stdout.write(render_markdown() if args.markdown else render_toml_example() if args.toml else render_env_example())
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from agent.infer import Model, ModelError, read_sidecar

    from agent.detectors import is_generic_spec, open_model, resolve

    path = resolve(args.path)
    result: dict[str, Any] = {"path": str(path)}  # JSON
    if is_generic_spec(path):
        try:
            generic = open_model(path)
        except ModelError as e:
            result["error"] = str(e)
            print(json.dumps(result, indent=2))
            return EX_CONFIG
        result["spec"] = generic.sidecar.model_dump(mode="json", by_alias=True)
        result["checks"] = {"spec": "ok"}
        result["runtime"] = {"name": generic.runtime, "version": generic.runtime_version}
        print(json.dumps(result, indent=2))
        return 0
    try:
        sidecar = read_sidecar(path)
        result["sidecar"] = sidecar.model_dump(mode="json", by_alias=True)
        result["checks"] = {"sidecar": "ok"}
        model = Model(path, runtime=args.runtime)
        result["checks"] = {"sidecar": "ok", "sha256": "ok", "tensors": "ok", "features": "ok"}
        if sidecar.derived:
            result["derived"] = _derived_info(sidecar)
            result["checks"]["derived"] = "ok"
        if sidecar.advice is not None:
            result["checks"]["advice"] = "ok"  # the sidecar validator checked channels, bounds and steps
        result["tensors"] = model.tensor_details()
        result["runtime"] = {"name": model.runtime, "version": model.runtime_version}
    except ModelError as e:
        result["error"] = str(e)
        print(json.dumps(result, indent=2))
        return EX_CONFIG
    print(json.dumps(result, indent=2))
    return 0


def _derived_info(sidecar: object) -> list[dict[str, object]]:
    """Each derived feature's formula, its value at the channels' normalisation means and the sidecar's mean for it:
    a feature whose units or constant are wrong shows up as two numbers far apart."""
    import numpy as np

    from agent.derive import Deriver, formula

    sc = sidecar  # a Sidecar (typed loosely: the import stays lazy)
    c = len(sc.channels)  # type: ignore[attr-defined]
    n = sc.normalisation  # type: ignore[attr-defined]
    derive = Deriver(sc.channels, sc.derived)  # type: ignore[attr-defined]
    at_means = derive(np.asarray(n.mean[:c])) if n.mean else None
    out = []
    for k, d in enumerate(sc.derived):  # type: ignore[attr-defined]
        item: dict[str, object] = {"name": d.name, "formula": formula(d)}
        if at_means is not None:
            item["at_channel_means"] = round(float(at_means[c + k]), 6)
            item["sidecar_mean"] = n.mean[c + k]
        out.append(item)
    return out


def _asset_payload(asset_id: str) -> str:
    """The payload a command needs to name an asset (with [[assets]] a calibrate without one is refused)."""
    return f" with {json.dumps({'asset': asset_id})}" if asset_id else ""


def cmd_calibrate(args: argparse.Namespace) -> int:
    from agent.assets import load_model
    from agent.calibrate import Calibrator
    from agent.infer import ModelError
    from agent.parse import iso

    try:
        settings = _settings(args)
        machines = _calibration_targets(settings, args.asset)
        if args.reset and len(machines) > 1:
            raise ConfigError([f"--reset: name the asset to teach in again with --asset (one of "
                               f"{', '.join(m[0] for m in machines)})"])
    except ConfigError as e:
        return _config_fail(e)
    if args.reset:
        from agent.files import state_dir_holder

        pid = state_dir_holder(settings.state_dir)
        if pid is not None:  # removing the files under a running agent: it would write them back at its stop
            print(f"calibrate --reset: an edge-agent{f' (pid {pid})' if pid else ''} runs on {settings.state_dir}: "
                  f"stop it first, or send it the command {settings.mqtt.topic_prefix}/{settings.device_id}"
                  f"/cmd/calibrate{_asset_payload(machines[0][0])} (teach-in again without a stop)", file=sys.stderr)
            return EX_TEMPFAIL
    results: dict[str, Any] = {}
    for asset_id, eff, state_dir in machines:
        # a file where the state directory should be: say so (as run does), not "not calibrated" or a traceback
        there = next((p for p in (state_dir, *state_dir.parents) if os.path.lexists(p)), None)
        if there is not None and not there.is_dir():
            print(f"config error: state directory {there}: exists and is not a directory (EDGE_AGENT_STATE_DIR)",
                  file=sys.stderr)
            return EX_CONFIG
        try:
            model = load_model(eff)
        except ModelError as e:
            print(f"model error{f' (asset {asset_id})' if asset_id else ''}: {e}", file=sys.stderr)
            return EX_CONFIG
        if getattr(model, "needs_channels", False):  # a generic detector: its channels are those of its teach-in
            stored = Calibrator(model, 0, state_dir).stored_channels()
            if stored:
                model = model.with_channels(stored)
        # showing only reads (an agent may run on these files): an unusable file is reported and left in place
        cal = Calibrator(model, 1, state_dir, clock=eff.calibration.timezone, read_only=not args.reset)
        for path, why in cal.unusable.found:
            print(f"warning: {path} is unusable ({why}): left in place (calibrate only reads; the agent sets it "
                  "aside when it reads it)", file=sys.stderr)
        if args.reset:
            try:
                removed = cal.reset()
            except OSError as e:
                print(f"config error: state directory {state_dir}: cannot remove the calibration ({e.strerror}) "
                      "(EDGE_AGENT_STATE_DIR)", file=sys.stderr)
                return EX_CONFIG
            print(f"calibration in {state_dir} removed: teach-in starts again on the next start" if removed else
                  f"no calibration in {state_dir}, nothing removed: teach-in runs on the next start")
            continue
        results[asset_id] = {"calibrated": True, **cal.result.to_json()} if cal.result else {"calibrated": False}
        kept = cal.kept_at()
        if cal.result is None and kept is not None:  # a teach-in under way, as last kept (every 10 min, at a stop)
            results[asset_id]["teach_in"] = {"collected": cal.collected, "elapsed_s": round(cal.elapsed_s, 1),
                                             "kept_at": iso(kept)}
        if cal.result is not None:
            _add_alert_levels(results[asset_id], cal.result, eff, state_dir)
        if cal.result is not None and cal.result.warning:
            print(f"warning: teach-in{f' of {asset_id}' if asset_id else ''}: {cal.result.warning}", file=sys.stderr)
    if not args.reset:
        print(json.dumps(results[""] if list(results) == [""] else results, indent=2))
    return 0


def _add_alert_levels(shown: dict[str, Any], result: Any, eff: Any, state_dir: Path) -> None:
    """What a generic detector's teach-in learnt, in each channel's units, at the threshold the agent runs with: one
    set by command (``overrides.json``, read only), else the configured one, else the calibrated one."""
    from agent.control import load_overrides

    threshold = load_overrides(state_dir / "overrides.json", read_only=True).get("threshold")
    source = "command" if threshold is not None else "calibrated"
    if threshold is None and eff.model.threshold is not None:
        threshold, source = float(eff.model.threshold), "settings"
    levels = result.alert_levels(threshold)
    if levels is not None:
        shown["alert_levels"] = {
            "threshold": float(f"{threshold if threshold is not None else result.threshold:.6g}"), "source": source,
            "daily_profile": bool((result.params or {}).get("season")),
            "channels": {ch: {k: float(f"{v:.6g}") for k, v in lv.items()} for ch, lv in levels.items()}}


def _calibration_targets(settings: Any, asset: str | None) -> list[tuple[str, Any, Path]]:
    """(asset id, effective settings, state dir) of the machines ``calibrate`` looks at: every asset, or the
    one named; without [[assets]] the gateway itself."""
    if not settings.assets:
        if asset:
            raise ConfigError([f"--asset {asset}: this configuration has no [[assets]]"])
        return [("", settings, settings.state_dir)]
    from agent.asset_settings import effective_settings

    ids = [a.id for a in settings.assets]
    if asset is not None and asset not in ids:
        raise ConfigError([f"--asset {asset}: no such asset (one of {', '.join(ids)})"])
    return [(a.id, effective_settings(settings, a), settings.state_dir / "assets" / a.id)
            for a in settings.assets if asset is None or a.id == asset]


def cmd_export_feedback(args: argparse.Namespace) -> int:
    from agent.evidence import EvidenceStore, export_feedback

    try:
        settings = _settings(args)
    except ConfigError as e:
        return _config_fail(e)
    path = settings.state_dir / "evidence.db"
    if not path.exists():
        print(f"no evidence store at {path}: no alert has been raised with this EDGE_AGENT_STATE_DIR", file=sys.stderr)
        return 1
    store = EvidenceStore(path)
    try:
        result = export_feedback(store, Path(args.out))
    except OSError as e:
        print(f"export-feedback: --out {args.out}: cannot write {e.filename or args.out} ({e.strerror or e})",
              file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"wrote {result['written']} labelled recordings to {args.out} ({result['without_evidence']} labels without evidence)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from agent import evaluate

    return int(evaluate.run(args))


def cmd_monitor(args: argparse.Namespace) -> int:
    from agent import monitor

    return int(monitor.run(args))


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line. Given ``argv``, the options of ``evaluate`` and ``monitor`` are added only when one of
    them is asked for: importing them costs ``run`` ~50 ms of its start (and their help still lists both)."""
    full = argv is None or bool({"evaluate", "monitor"} & set(argv))
    p = argparse.ArgumentParser(prog="edge-agent", description="On-device machine-health inference for gateways.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: object, help: str, env: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        if env:
            sp.add_argument("--env-file", metavar="PATH", help="env file with EDGE_AGENT_* settings (default: /etc/edge-agent/agent.env when it exists); the environment overrides it")
        sp.set_defaults(fn=fn)
        return sp

    add("run", cmd_run, "run the agent (with no configuration: the bundled demo recording and model)")
    c = add("check-config", cmd_check_config, "validate the configuration and print it with secrets masked (exit 0, or 78 when invalid)")
    c.add_argument("--json", action="store_true", help="print JSON instead of env lines")
    add("version", cmd_version, "print the version", env=False)
    cr = add("config-reference", cmd_config_reference, "print every setting with its default and meaning (deploy/agent.env.example)", env=False)
    form = cr.add_mutually_exclusive_group()  # one form at a time: both asked for, the one printed was a guess
    form.add_argument("--markdown", action="store_true", help="as Markdown tables (the README's configuration section)")
    form.add_argument("--toml", action="store_true", help="as a commented TOML configuration file (deploy/agent.toml.example)")
    m = sub.add_parser("model", help="model tools", description="model tools")
    msub = m.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    mi = msub.add_parser("info", help="print a model's sidecar, tensor details and the result of every check", description="print a model's sidecar, tensor details and the result of every check")
    mi.add_argument("path", help="a bundled model's name (generic, pump-anomaly, machine-failure), a .tflite file "
                                 "(its .json sidecar beside it) or a generic detector's .json spec")
    mi.add_argument("--runtime", default="auto", choices=["auto", "ai_edge_litert", "tflite_runtime"])
    mi.set_defaults(fn=cmd_model_info)
    cal = add("calibrate", cmd_calibrate, "show the teach-in result, or --reset it so teach-in starts again")
    cal.add_argument("--reset", action="store_true", help="forget the calibration")
    cal.add_argument("--asset", metavar="ID", help="with [[assets]]: only this asset (default: every asset)")
    ex = add("export-feedback", cmd_export_feedback, "write the alerts labelled by feedback, with their evidence, as a dataset for models/ training scripts")
    ex.add_argument("--out", required=True, metavar="DIR", help="output folder (SKAB-format CSV per alert + labels.csv)")
    ev = sub.add_parser("evaluate", help="score labelled recordings through the daemon's pipeline (F1/FAR/MAR, events, plots)",
                        description="score labelled recordings through the daemon's pipeline (F1/FAR/MAR, events, plots)")
    ev.set_defaults(fn=cmd_evaluate)
    mo = sub.add_parser("monitor", help="live table of the gateways under the topic prefix (--once: one snapshot)", description="live table of the gateways under the topic prefix: state, last seen, model, open alerts, outbox, bandwidth ratio")
    mo.set_defaults(fn=cmd_monitor)
    if full:
        from agent import evaluate, monitor

        evaluate.add_arguments(ev)
        monitor.add_arguments(mo)
    return p


EX_SIGPIPE = 128 + 13  # what the shell reports for a command ended by SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edge-agent`` console script and ``python -m agent``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv).parse_args(argv)
    try:
        rc = int(args.fn(args))
        sys.stdout.flush()  # here, not at exit, where a closed pipe is "Exception ignored" and exit status 120
        return rc
    except BrokenPipeError:  # `edge-agent check-config | head`: the reader left; no traceback
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit would raise again
        except (OSError, ValueError):
            pass
        return EX_SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
