"""A PUBACK deletes the row before the row stops counting as in flight: no window in which the publisher thread can
pick it up again and publish it a second time (found as duplicate alerts at the broker under load)."""

from __future__ import annotations

import threading
from pathlib import Path

from agent.counters import Counters
from agent.outbox import Outbox
from agent.records import Outgoing
from agent.settings import MqttSettings
from agent.uplink import Uplink


class SlowAckOutbox(Outbox):
    """A real outbox whose ack pauses until the test lets it go (a seam to hold the race window open)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.in_ack = threading.Event()
        self.release = threading.Event()

    def ack(self, row_id: int) -> None:
        self.in_ack.set()
        self.release.wait(5)
        super().ack(row_id)


def test_a_row_being_acknowledged_is_never_offered_to_the_publisher_again(tmp_path: Path) -> None:
    outbox = SlowAckOutbox(tmp_path / "outbox.db", Counters())
    row = outbox.put(Outgoing(kind="alert", topic_suffix="alerts", payload={"id": "a1"}))
    up = Uplink(MqttSettings(), "gw", outbox, Counters(), status=lambda: {})
    up._inflight[7] = (row, 0.0)  # published as mid 7, awaiting its PUBACK  # noqa: SLF001
    t = threading.Thread(target=up._on_publish, args=(None, None, 7, None, None))  # noqa: SLF001 - paho's callback
    t.start()
    assert outbox.in_ack.wait(5)
    # what the publisher thread would select now (agent.uplink.Uplink._publish_pending)
    with up._lock:  # noqa: SLF001
        busy = {r for r, _ in up._inflight.values()}  # noqa: SLF001
    offered = [r.id for r in outbox.pending(10, exclude=busy)]
    outbox.release.set()
    t.join(5)
    assert row not in offered, "the row was offered for publishing again while its PUBACK was being processed"
    assert outbox.depth() == 0 and up._inflight == {}  # noqa: SLF001
    up.client.loop_stop()
    outbox.close()
