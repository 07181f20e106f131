"""The agent with a hung pipeline stage, for the watchdog test: ``python -m tests.faults.hang_launcher N run``.

The fault is injected here, through the seam every stage has (a method on its class), not by a switch in the
production code: from the N-th reading on, ``Pipeline.process`` never returns, as a wedged delegate or a blocked
driver would.
"""

from __future__ import annotations

import sys
import threading

from agent.pipeline import Pipeline


def main() -> int:
    after = int(sys.argv[1])
    calls = {"n": 0}
    process = Pipeline.process

    def hanging(self, reading):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] >= after:
            threading.Event().wait()  # hung: the health thread must notice no progress
        return process(self, reading)

    Pipeline.process = hanging  # type: ignore[method-assign]
    from agent.cli import main as cli

    return cli(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
