"""The agent with a fault injected through a seam, for the watchdog and guard tests:

    python -m tests.faults.launcher hang-pipeline N run   # Pipeline.process never returns from the N-th reading
    python -m tests.faults.launcher crash THREAD run      # the stage run by thread THREAD raises after a moment

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


def main() -> int:
    mode, arg, *rest = sys.argv[1:]
    if mode == "hang-pipeline":
        _hang_pipeline(int(arg))
    elif mode == "crash":
        _crash(arg)
    else:
        raise SystemExit(f"unknown fault {mode!r}")
    from agent.cli import main as cli

    return cli(rest)


if __name__ == "__main__":
    sys.exit(main())
