"""Cost of eviction in a full outbox: how long one ``Outbox.put`` holds the outbox's lock when it has to evict.

Run from the repository root:  nice -n 5 .venv/bin/python bench/outbox_evict.py [--rows 10000] [--puts 30] [--json out.json]

No broker, no agent process: the daemon's real ``agent.outbox.Outbox`` on a SQLite file in a temporary directory
(``synchronous=FULL``, as in the daemon). The outbox is filled with ``--rows`` alerts (raises, each of its own
alert id, never handed to an uplink) and its ``dead_letter`` table with as many refused alerts of other ids (a
broker refusing alerts for a long time): an evicted raise's other rows are looked up in both tables. The filling is
not timed (and runs with ``synchronous=OFF``, put back to FULL before timing). Timed, each a whole ``put`` (the
time it holds the lock, its fsync included):

* ``evict 1 row``: a raise put into the full outbox evicts the oldest raise (median of ``--puts``);
* ``evict 201 rows``: one raise put with the byte bound set so that exactly 201 rows must go (the count is checked
  from the drop counters and printed);
* ``evict past lone clears``: the oldest 90 % of the rows are clears whose raises were delivered ("lone clears",
  evicted last): a raise put evicts the oldest raise behind them (median of ``--puts``).

Baseline (same run): a ``put`` into an outbox with room (it evicts nothing; same file, same rows), median of
``--puts``. No goal from an issue: the numbers are for the commit and the report. Measured 2026-12-03 (shared VM):
21 ms per put evicting one row and 3.7 s for 201 rows when an alert's rows were found by a scan of both tables;
3.0 ms (the baseline put 2.9 ms) and 13 ms with the indexed ``alert_id`` column.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.counters import Counters  # noqa: E402
from agent.outbox import Outbox  # noqa: E402
from agent.records import Outgoing, message_bytes  # noqa: E402
from bench._common import print_rows, result, write_json  # noqa: E402

PAD = "x" * 600  # a real alert's payload is ~0.5-1 KB without inline evidence


def alert(alert_id: str, state: str = "raised") -> Outgoing:
    return Outgoing("alert", "alerts", {"id": f"{alert_id}-{state}", "alert_id": alert_id, "state": state,
                                        "sensor": "pump-1", "pad": PAD})


def timed_put(ob: Outbox, msg: Outgoing) -> float:
    t0 = time.perf_counter()
    ob.put(msg)
    return (time.perf_counter() - t0) * 1000


def filled(path: Path, rows: int, dead: int, lone: int = 0) -> Outbox:
    """An outbox with ``dead`` dead letters and ``rows`` queued alerts (the first ``lone`` of them lone clears)."""
    ob = Outbox(path, Counters(), max_rows=rows)
    ob._db.execute("PRAGMA synchronous=OFF")  # filling only: not timed
    for i in range(dead):
        ob.put(alert(f"D{i}"))
        [row] = ob.pending(1)
        ob.dead_letter(row.id, 0x87, "not authorized")
    for i in range(rows):
        ob.put(alert(f"L{i}", "cleared") if i < lone else alert(f"A{i}"))
    ob._handed.clear()  # pending() above handed out only the dead letters, gone from the outbox
    ob._db.execute("PRAGMA synchronous=FULL")
    return ob


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000, help="rows in the outbox and in its dead_letter table")
    ap.add_argument("--puts", type=int, default=30)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # a warning per evicted row
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="outbox-evict-") as tmp:
        ob = filled(Path(tmp) / "full.db", a.rows, a.rows)
        ob.max_rows = a.rows + a.puts + 1  # room: the baseline evicts nothing
        base = statistics.median(timed_put(ob, alert(f"B{i}")) for i in range(a.puts))
        ob.max_rows = ob.depth()
        one = statistics.median(timed_put(ob, alert(f"N{i}")) for i in range(a.puts))
        assert ob.depth() == ob.max_rows
        out.append(result("evict 1 row (median put)", one, "ms", base, "ms put, room", one / base, "-", None,
                          rows=a.rows, dead_letters=a.rows))

        lengths = [n for (n,) in ob._db.execute("SELECT LENGTH(payload) FROM outbox ORDER BY priority DESC, id")]
        size = sum(lengths)
        big = alert("BIG")
        body = len(message_bytes({**big.payload, "seq": 10**6}))  # seq: 7 digits at most here
        ob.max_bytes = size + body - sum(lengths[:201])
        before = ob.counters.snapshot("outbox.dropped.").get("alert", 0)
        t201 = timed_put(ob, big)
        n = ob.counters.snapshot("outbox.dropped.").get("alert", 0) - before
        out.append(result(f"evict {n} rows (one put)", t201, "ms", base, "ms put, room", t201 / base, "-", None,
                          evicted=n, ms_per_evicted_row=t201 / max(n, 1)))
        ob.close()

        lone = a.rows * 9 // 10
        ob = filled(Path(tmp) / "lone.db", a.rows, 0, lone=lone)
        past = statistics.median(timed_put(ob, alert(f"M{i}")) for i in range(a.puts))
        kept = ob._db.execute("SELECT COUNT(*) FROM outbox WHERE instr(payload, '\"state\":\"cleared\"')").fetchone()[0]
        out.append(result(f"evict past {lone} lone clears", past, "ms", base, "ms put, room", past / base, "-", None,
                          lone_clears=lone, lone_clears_left=kept))
        ob.close()
    print_rows(out)
    for r in out:
        extra = {k: v for k, v in r.items() if k not in ("name", "measure", "unit", "baseline", "baseline_unit",
                                                         "ratio", "goal", "pass")}
        print(f"  {r['name']}: {extra}")
    write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
