"""The agent's signal handlers take no lock: a SIGTERM landing while the main thread holds a lock (as it does for a few
bytecodes of every threading.Event.wait) must still be noted, never hang the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from agent.signals import SignalCounter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_counts_every_delivery_and_seen_loses_none():
    c = SignalCounter(signal.SIGUSR1).install()
    try:
        assert not c.arrived and not c.seen()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)  # the handler runs at the next bytecode boundary of the main thread
        assert c.arrived and c.count == 1
        assert c.seen() and not c.seen()  # one batch, reported once
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert c.count == 3 and c.seen() and not c.seen()
    finally:
        c.restore()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_sleep_returns_early_when_a_signal_arrives():
    c = SignalCounter(signal.SIGUSR1).install()
    try:
        assert c.sleep(0.05) is False  # nothing arrived: the whole time
        t = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
        t.start()
        t0 = time.monotonic()
        assert c.sleep(10) is True
        assert time.monotonic() - t0 < 5
        t.join()
    finally:
        c.restore()


def test_handler_runs_while_the_main_thread_holds_the_lock_of_an_event():
    """The exact situation that hung the agent: SIGTERM delivered while the main thread is inside the locked part of
    Event.wait(). In a child process, so a hang fails the test by timeout instead of hanging the suite."""
    code = textwrap.dedent("""
        import os, signal, threading, time
        from agent.signals import SignalCounter
        stop = threading.Event()
        term = SignalCounter(signal.SIGTERM).install()
        with stop._cond:                        # what Event.wait() holds between its bytecodes
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):               # bytecode boundaries: the handler runs here, in this thread
                pass
        if term.arrived:                        # the main loop turns the count into the event, outside the lock
            stop.set()
        print("stopped" if stop.is_set() else "missed")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "stopped"


def test_sleep_on_the_main_thread_waits_on_the_wakeup_pipe_and_wake_main_ends_it():
    """On the main thread ``sleep`` does not poll: it waits on the pipe that signals write to; ``wake_main`` from
    another thread ends it early (False: no signal of this counter's), a signal too (True). In a child process, as the
    wake-up fd is process-wide."""
    code = textwrap.dedent("""
        import os, signal, threading, time
        from agent.signals import SignalCounter, wake_main
        import agent.signals as sig
        c = SignalCounter(signal.SIGUSR1).install()
        t0 = time.monotonic(); assert c.sleep(0.3) is False; slept = time.monotonic() - t0
        assert sig._pipe is not None, "no wake-up pipe on the main thread"
        threading.Timer(0.2, wake_main).start()
        t0 = time.monotonic(); woke = c.sleep(30); waited = time.monotonic() - t0
        assert woke is False and waited < 10, (woke, waited)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        t0 = time.monotonic(); woke = c.sleep(30); waited2 = time.monotonic() - t0
        assert woke is True and waited2 < 10, (woke, waited2)
        print("ok", round(slept, 2))
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ok 0.3")  # the whole time when nothing arrives
