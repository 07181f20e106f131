"""The agent with a fault injected through a seam, for the watchdog and guard tests:

    python -m tests.faults.launcher hang-pipeline N run   # Pipeline.process never returns from the N-th reading
    python -m tests.faults.launcher crash THREAD run      # the stage run by thread THREAD raises after a moment
    python -m tests.faults.launcher slow-connect-status S run  # the status published on each connect takes S s

The fault is put in here, through the seam every stage has (a method on its class), not by a switch in the
production code: a wedged delegate or a blocked driver hangs the pipeline; a bug kills a thread.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable


def _hang_pipeline(after: int) -> None:
    from agent.pipeline import Pipeline

    calls = {"n": 0}
    process = Pipeline.process

    def hanging(self: Any, reading: Any) -> Any:
        calls["n"] += 1
        if calls["n"] >= after:
            threading.Event().wait()  # hung: the health thread must notice no progress
        return process(self, reading)

    Pipeline.process = hanging  # type: ignore[method-assign]


def _crash(thread: str) -> None:
    from agent.health import HealthMonitor
    from agent.runtime import PipelineLoop
    from agent.uplink import Uplink

    owners: dict[str, tuple[type, str]] = {"health": (HealthMonitor, "run"), "uplink": (Uplink, "_run"),
                                           "pipeline": (PipelineLoop, "run")}
    cls, name = owners[thread]
    original: Callable[..., Any] = getattr(cls, name)

    def crashing(self: Any, *a: Any, **kw: Any) -> Any:
        time.sleep(1.0)  # after the start, as a bug hit in operation would
        raise RuntimeError(f"injected fault in the {thread} thread")

    setattr(cls, name, crashing)
    del original


def _slow_connect_status(seconds: float) -> None:
    """The status published in ``on_connect`` (paho's network thread) takes ``seconds`` to build, as on a loaded
    gateway: it widens the moment between "connected" and paho re-sending what the last connection left unacked."""
    from agent.uplink import Uplink

    publish_status = Uplink.publish_status

    def slow(self: Any) -> None:
        if threading.current_thread().name.startswith("paho"):
            time.sleep(seconds)
        publish_status(self)

    Uplink.publish_status = slow  # type: ignore[method-assign]


def main() -> int:
    mode, arg, *rest = sys.argv[1:]
    if mode == "hang-pipeline":
        _hang_pipeline(int(arg))
    elif mode == "crash":
        _crash(arg)
    elif mode == "slow-connect-status":
        _slow_connect_status(float(arg))
    else:
        raise SystemExit(f"unknown fault {mode!r}")
    from agent.cli import main as cli

    return cli(rest)


if __name__ == "__main__":
    sys.exit(main())
