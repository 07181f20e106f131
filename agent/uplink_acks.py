"""A PUBACK that never comes on a live connection: the uplink drops the connection and sends again.

The uplink keeps at most ``max_inflight`` QoS 1 messages unacknowledged. A broker (or a middlebox) that swallows
PUBLISH packets while the TCP connection and the keepalive's PINGREQ/PINGRESP stay alive fills that window, and
nothing more is ever sent: no alert is lost (rows stay in the outbox), none arrives. Neither MQTT 3.1.1 nor MQTT 5
lets a client send a message again on the same connection (MQTT 5 4.4: only on a reconnection), and paho 2.2 has no
PUBACK timeout of its own. So when no PUBACK has come for ``EDGE_AGENT_MQTT__ACK_TIMEOUT_S`` while rows await one,
the connection counts as broken: a warning, ``uplink.ack_timeouts`` counted, the socket shut down. paho sees the
connection lost and reconnects by itself, and the uplink publishes what was in flight again from the outbox, in
order (``Uplink._reset_inflight``). The broker sees a connection lost too and publishes the last will; the uplink's
status on the new connection replaces it.

The clock runs from the later of the oldest unacknowledged row's publish and the last PUBACK for the row that was
the oldest then: a slow link on which PUBACKs still come never times out, however long a full window takes to drain
(a clock per message would: ten alerts with inline evidence on a slow cellular link). A PUBACK for a newer row does
not restart it: brokers send PUBACKs in the order the PUBLISHes came (MQTT 3.1.1 and 5, 4.6), so it says that the
older row's PUBLISH was lost, and the rows acknowledged behind it must not hold it for ever (a middlebox that drops
one packet: the raise of an alert, its clear held behind it). It runs only while connected. A drop is not a broker
outage: the uplink does not add the outage warning (one warning here, again every ``WARN_EVERY_S`` while drops
repeat with no PUBACK in between; the others at INFO); it counts in ``uplink.connect_failures`` as any lost
connection, not in ``uplink.short_connections``.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Iterable
from typing import Any

from agent.counters import Counters

log = logging.getLogger("agent.uplink")

WARN_EVERY_S = 600.0  # timeouts in a row with no PUBACK in between (a hung broker): one warning per this many seconds


def overdue(now: float, oldest_sent: float | None, last_ack: float, timeout_s: float) -> bool:
    """True when rows await a PUBACK (``oldest_sent``: the oldest one's publish time) and none has come for
    ``timeout_s``, counted from the later of that publish and the last PUBACK (``last_ack``)."""
    return oldest_sent is not None and now - max(oldest_sent, last_ack) >= timeout_s


def shut_down(client: Any) -> None:
    """Shut the client's socket down under paho (thread-safe: paho's network thread reads the end of the stream
    and takes the connection for lost, as any other)."""
    sock = client.socket()
    try:  # socket.socket's own shutdown, also under a TLS socket (its wrapper's would drop its state under paho)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, TypeError):  # closed meanwhile (paho reconnects anyway), or no socket
        pass


class AckWatch:
    """Drops a connection on which no PUBACK has come for ``timeout_s`` while rows await one; once per
    connection. ``acked`` is called on paho's thread, the rest on the uplink thread."""

    def __init__(self, timeout_s: float, counters: Counters, broker: str):
        self.timeout_s = timeout_s
        self.counters = counters
        self.broker = broker
        self.dropped = False  # this connection was dropped here (not the broker's doing); reset by ``connected``
        self._last_ack = -math.inf
        self._in_a_row = 0  # timeouts with no PUBACK in between
        self._warned_at = -math.inf

    def connected(self) -> None:
        self.dropped = False

    def acked(self, now: float) -> None:
        """A PUBACK for the oldest row awaiting one (a newer row's is no progress: see the module's docstring)."""
        self._last_ack = now
        self._in_a_row = 0

    def check(self, client: Any, now: float, sent: Iterable[float]) -> bool:
        """Drop the connection when its PUBACKs are overdue (``sent``: publish times of the rows awaiting one)."""
        times = list(sent)
        if self.dropped or not overdue(now, min(times, default=None), self._last_ack, self.timeout_s):
            return False
        if client.socket() is None:  # lost already: paho is reconnecting
            return False
        self.dropped = True
        self.counters.inc("uplink.ack_timeouts")
        self._in_a_row += 1
        if self._in_a_row == 1 or now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            again = f" ({self._in_a_row} times in a row)" if self._in_a_row > 1 else ""
            log.warning("no PUBACK from %s for %.0f s while %d messages await one on a connection that is alive%s: "
                        "dropping it to send them again on a new one (EDGE_AGENT_MQTT__ACK_TIMEOUT_S; stats "
                        "uplink.ack_timeouts)", self.broker, now - max(min(times), self._last_ack), len(times), again)
        else:
            log.info("no PUBACK from %s again (%d times in a row): dropping the connection", self.broker,
                     self._in_a_row)
        shut_down(client)
        return True
