"""``edge-agent monitor``: the fleet view — every gateway under ``{prefix}/+/`` in one live table.

Subscribes to ``{prefix}/+/status`` (QoS 1, retained: every device known to the broker shows up at once),
``{prefix}/+/stats`` (QoS 0), ``{prefix}/+/alerts`` and ``{prefix}/+/advice`` and, for gateways with assets,
``{prefix}/+/asset/+/alerts`` and ``{prefix}/+/asset/+/advice`` (QoS 1) and keeps, per device: the state, when it
was last seen, the model, the open alerts, the last advice, the outbox depth and the bandwidth ratio; per asset of
a gateway: its state, model, teach-in or degraded reasons, open and last alerts (a row under its gateway).
``--once`` prints one snapshot and exits; without it the table is redrawn in place every ``--interval`` seconds
until Ctrl-C.

The parts, each testable alone, are in agent/monitoring/: ``fleet.py`` (:class:`Fleet`, the state fed by
:meth:`Fleet.handle`; pure, no I/O; payloads read by agent/payloads.py), ``rows.py`` (the JSON form),
``render.py`` (:func:`render_table`, a snapshot as text fitted to a terminal width) and ``client.py``
(:class:`MonitorClient`, the paho-mqtt 2 client built like the uplink's: user name, password file, TLS). This
module is the command (:func:`run`: the terminal loop) and re-exports the public names. The rules (state, last
seen, stale, open alerts, assets) are in agent/monitoring/fleet.py and docs/monitor.md.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from agent.monitoring.client import MonitorClient
from agent.monitoring.fleet import (
    CLEARED_IDS_MAX,
    DEFAULT_STATS_INTERVAL_S,
    KINDS,
    SEEN_IDS_MAX,
    STALE_FACTOR,
    STATE_RANK,
    Device,
    Fleet,
    parse_iso,
)
from agent.monitoring.rows import asset_row, device_row, snapshot_json
from agent.monitoring.render import COLUMNS, advice_text, cells, fit, format_age, render_header, render_table
from agent.signals import SignalCounter

__all__ = [
    "CLEARED_IDS_MAX", "COLUMNS", "DEFAULT_STATS_INTERVAL_S", "EXIT_NO_DEVICE", "EXIT_OK", "EXIT_UNREACHABLE",
    "EX_CONFIG", "KINDS", "SEEN_IDS_MAX", "STALE_FACTOR", "STATE_RANK", "Device", "Fleet", "MonitorClient",
    "add_arguments", "advice_text", "asset_row", "cells", "device_row", "format_age", "main", "parse_iso",
    "render_header", "render_table", "run", "snapshot_json",
]

EXIT_OK = 0
EXIT_NO_DEVICE = 1
EXIT_UNREACHABLE = 2
EX_CONFIG = 78


def add_arguments(parser: argparse.ArgumentParser, env_file: bool = True) -> argparse.ArgumentParser:
    """The options of ``edge-agent monitor`` (``env_file=False`` when the caller adds ``--env-file`` itself)."""
    parser.add_argument("--host", default=None, help="broker host (default: EDGE_AGENT_MQTT__HOST, else localhost)")
    parser.add_argument("--port", type=_port, default=None, help="broker port, 1-65535 (default: EDGE_AGENT_MQTT__PORT, else 1883)")
    parser.add_argument("--prefix", default=None, metavar="PREFIX",
                        help="topic prefix; devices are PREFIX/+/ (default: EDGE_AGENT_MQTT__TOPIC_PREFIX, else edge)")
    parser.add_argument("--once", action="store_true",
                        help="print one snapshot and exit: after --timeout, or as soon as every device seen has sent "
                             "its status and stats (0; 1 when no device was seen; 2 when the broker cannot be reached)")
    parser.add_argument("--timeout", type=_positive, default=10.0, metavar="S",
                        help="with --once: collect for at most S seconds (default 10)")
    parser.add_argument("--json", action="store_true",
                        help="print each snapshot as one line of JSON ({ts, devices: [...]}) instead of a table")
    parser.add_argument("--interval", type=_positive, default=1.0, metavar="S", help="refresh period in seconds (default 1)")
    if env_file:
        parser.add_argument("--env-file", metavar="PATH", default=None,
                            help="agent env file for the broker settings (user name, password file, TLS); "
                                 "default: /etc/edge-agent/agent.env when it exists; the environment overrides it")
    return parser


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"{v} is not a TCP port (1-65535)")
    return v


def _fail(msg: str, code: int) -> int:
    print(f"monitor: {msg}", file=sys.stderr)
    return code


def _ellipsis(stream: Any) -> str:
    return "…" if (getattr(stream, "encoding", "") or "").lower().replace("-", "").startswith("utf") else "~"


def run(args: argparse.Namespace) -> int:
    """``edge-agent monitor`` with parsed arguments; the exit code."""
    from agent.settings import ConfigError, load_settings
    from agent.mqtt_client import describe_connect_error

    env_file = getattr(args, "env_file", None)
    try:
        settings = load_settings(Path(env_file) if env_file else None)
    except ConfigError as e:
        for line in e.problems:
            print(f"config error: {line}", file=sys.stderr)
        return EX_CONFIG
    m = settings.mqtt
    host = args.host or m.host
    port = args.port or m.port
    prefix = (args.prefix or m.topic_prefix).strip("/")
    if not prefix or any(ch in prefix for ch in "+#"):
        return _fail(f"--prefix {prefix!r}: must not be empty nor contain + or #", EXIT_UNREACHABLE)
    fleet = Fleet(prefix)
    mc = MonitorClient(fleet, host, port, m)
    where = f"{host}:{port} {prefix}/+"
    try:
        mc.connect(keepalive=m.keepalive_s)
    except (OSError, ValueError) as e:
        why = describe_connect_error(e if isinstance(e, OSError) else None)
        return _fail(f"cannot reach the broker {host}:{port}: {why}", EXIT_UNREACHABLE)
    try:
        if not mc.connack.wait(min(args.timeout, 10.0) if args.once else 10.0) or mc.refused:
            return _fail(mc.refused or f"no answer from the broker {host}:{port} (is it an MQTT broker?)", EXIT_UNREACHABLE)
        if args.once:
            return _once(args, fleet, mc, where)
        return _live(args, fleet, mc, where)
    finally:
        mc.close()


def _once(args: argparse.Namespace, fleet: Fleet, mc: MonitorClient, where: str) -> int:
    deadline = time.monotonic() + args.timeout
    settle_until: float | None = None
    while time.monotonic() < deadline:
        if mc.subscribed.is_set():
            if settle_until is None:
                settle_until = time.monotonic() + 0.3  # the retained statuses follow the SUBACK: take them all
            if time.monotonic() >= settle_until and fleet.complete():
                break
        time.sleep(0.05)
    if not mc.subscribed.is_set():
        return _fail(mc.refused or f"the broker {mc.host}:{mc.port} did not confirm the subscription", EXIT_UNREACHABLE)
    now = time.time()
    rows = fleet.rows(now)
    if not rows:
        return _fail(f"no device seen under {fleet.prefix}/+/ on {mc.host}:{mc.port} in {args.timeout:g} s", EXIT_NO_DEVICE)
    if args.json:
        print(snapshot_json(rows, now, broker=f"{mc.host}:{mc.port}", prefix=fleet.prefix))
    else:
        width = shutil.get_terminal_size((120, 24)).columns if sys.stdout.isatty() else 200
        print("\n".join(render_table(rows, width=width, ellipsis=_ellipsis(sys.stdout))))
    sys.stdout.flush()
    return EXIT_OK


def _live(args: argparse.Namespace, fleet: Fleet, mc: MonitorClient, where: str) -> int:
    term = SignalCounter(signal.SIGTERM).install()  # counts only: Event.set() in a handler can hang (agent/signals.py)
    tty = sys.stdout.isatty() and not args.json
    out = sys.stdout
    if tty:
        out.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear once; then redraw from home without flicker
    try:
        while not term.arrived:
            now = time.time()
            rows = fleet.rows(now)
            if args.json:
                out.write(snapshot_json(rows, now, broker=f"{mc.host}:{mc.port}", prefix=fleet.prefix,
                                        connected=mc.connected.is_set(), subscribed=mc.subscribed.is_set()) + "\n")
            else:
                size = shutil.get_terminal_size((120, 24))
                width = size.columns if tty else 200
                header = render_header(rows, now, where, mc.connected.is_set())
                lines = render_table(rows, width=width, colour=tty, ellipsis=_ellipsis(out))
                if tty:
                    room = max(2, size.lines - 4)
                    if len(lines) > room:
                        hidden = len(lines) - room + 1
                        what = "row" if any(r.get("assets") for r in rows) else "device"  # asset rows too
                        lines = lines[: room - 1] + [f"… {hidden} more {what}{'s' if hidden != 1 else ''}"]
                    text = [fit(h, width, _ellipsis(out)) for h in header] + [""] + lines
                    if not rows:
                        text.append(f"waiting for devices under {fleet.prefix}/+/ …")
                    out.write("\x1b[H" + "".join(line + "\x1b[K\n" for line in text) + "\x1b[J")
                else:
                    out.write("\n".join(header + lines) + "\n\n")
            out.flush()
            term.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `edge-agent monitor --json | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
    finally:
        term.restore()
        if tty:
            out.write("\x1b[?25h\n")
            out.flush()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.monitor`` (the same as ``edge-agent monitor``)."""
    p = argparse.ArgumentParser(prog="edge-agent monitor", description="live table of the gateways under a topic prefix")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

