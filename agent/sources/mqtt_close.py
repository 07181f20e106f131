"""Closing the MQTT source (``MqttSource.close``, split from agent.sources.mqtt): unsubscribe, take what the broker
delivered before and beside the UNSUBACK — every such message reaches the sink — disconnect, stop paho's thread."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt

from agent.sources import FINISHED

if TYPE_CHECKING:
    from agent.sources.mqtt import MqttSource

log = logging.getLogger("agent.sources.mqtt")  # the source's own lines, as before the split

UNSUBSCRIBE_WAIT_S = 1.0  # at close: wait this long for UNSUBACK without progress (messages before it reach the sink)
UNSUBSCRIBE_MAX_S = 2.5  # ... and at most this long while the sink works through what came before it
DRAIN_QUIET_S = 0.1  # after UNSUBACK: what the broker sent beside it is taken until the stream is quiet this long
LOOP_STOP_WAIT_S = 2.0  # at close: give paho's thread this long to end (a connect to a dead host can block it)


def shutdown(src: "MqttSource") -> None:
    """Unsubscribe, take what the broker delivered before and beside the UNSUBACK (it all reaches the sink),
    disconnect, stop paho's thread; only then stop handing over (a message paho's thread, left behind, still
    gets is counted as ``source.dropped_at_close``)."""
    src._closing = True
    c = src.client
    stopped = not src._started
    try:
        if src._connected:
            src._unsubscribed.clear()
            rc, _ = c.unsubscribe(src.topics)
            if rc == mqtt.MQTT_ERR_SUCCESS:
                drain(src)
        c.disconnect()
    except Exception:  # shutting down: the broker may be gone under us
        log.debug("error while disconnecting from the sensor broker", exc_info=True)
    finally:
        c.disable_logger()  # paho 2.2 logs a spurious "Client is not connected" after a disconnect
        if src._started:
            # loop_stop joins paho's thread, which may sit in a blocking connect to a dead host: bound it.
            stopper = threading.Thread(target=c.loop_stop, name="mqtt-source-stop", daemon=True)
            stopper.start()
            stopper.join(LOOP_STOP_WAIT_S)
            stopped = not stopper.is_alive()
            if not stopped:
                log.warning("paho's network thread did not stop within %.0f s; leaving it behind", LOOP_STOP_WAIT_S)
        if stopped and src._pending.held:  # paho's thread is gone: its last records are ours to hand over
            src._hand_over()
        src._delivering = False
        src._connected = False
        src._state = FINISHED


def drain(src: "MqttSource") -> None:
    """Wait for the UNSUBACK while the sink works through what came before it (``UNSUBSCRIBE_WAIT_S`` without
    progress, ``UNSUBSCRIBE_MAX_S`` at most), then for the stream to be quiet (``DRAIN_QUIET_S``): the QoS 1
    messages the broker still had in flight come beside the UNSUBACK."""
    start = last = time.monotonic()
    done = src._handed
    quiet = UNSUBSCRIBE_WAIT_S
    while True:
        acked = src._unsubscribed.wait(0.02)
        now = time.monotonic()
        if src._handed != done or src._pending.held:
            done, last = src._handed, now
        if acked:
            quiet = DRAIN_QUIET_S
        if now - last >= quiet or now - start >= UNSUBSCRIBE_MAX_S + (DRAIN_QUIET_S if acked else 0):
            return
