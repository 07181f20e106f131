"""Values from outside (commands, topics, files, devices) made safe for a log line: escaped and cut.

A newline in an ``alert_id`` must not forge a log line, nor a 1 MB id make a 1 MB one. ``clip`` is applied to every
such value where it is logged; ``SafeFormatter`` escapes whatever still reaches the handler (third-party lines).
"""

from __future__ import annotations

import logging
import threading

LIMIT = 200  # characters of one value kept in a log line


def _escape_char(c: str) -> str:
    if c == "\\":
        return "\\\\"
    if c in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[c]
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def escape(text: str) -> str:
    """Control and other unprintable characters (line and paragraph separators too) as ``repr`` shows them."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if (c.isprintable() and c != "\\") else _escape_char(c) for c in text)


def clip(value: object, limit: int = LIMIT) -> str:
    """``value`` as text for a log line: escaped, and cut to ``limit`` characters with a marker saying how many
    more there were."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return escape(text)
    return f"{escape(text[:limit])}…[+{len(text) - limit} chars]"


_working_on = threading.local()


def working_on(asset: str) -> None:
    """The asset the calling thread works for from now on ("" = none): its log lines start with ``[<asset>]``.
    The pipeline thread sets it around each asset's step, so a stage's line names its machine without the stage
    knowing there are several."""
    _working_on.asset = asset


class SafeFormatter(logging.Formatter):
    """A formatter that escapes control characters in the message (a traceback keeps its lines) and names the
    asset the thread is working for."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        asset = getattr(_working_on, "asset", "")
        record.message = f"[{asset}] {escape(record.message)}" if asset else escape(record.message)
        return super().formatMessage(record)
