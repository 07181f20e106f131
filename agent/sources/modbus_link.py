"""The words for a Modbus bus's link errors (agent.sources.modbus): why a connection could not be opened or was lost,
as the status shows them: the OS's error in its own words (``connection refused``, ``timed out``, ``connection reset
by peer``), a path or host as it is; pymodbus' prefixes, timings and client descriptions left out."""

from __future__ import annotations

import re
import socket

from pymodbus.client import ModbusTcpClient


class TcpClient(ModbusTcpClient):
    """pymodbus' TCP client keeping the error of its last failed connect (``error``) for the status."""

    error: OSError | None = None

    def connect(self) -> bool:
        if self.socket:
            return True
        p = self.comm_params
        try:
            self.socket = socket.create_connection((p.host, p.port), timeout=p.timeout_connect,
                                                   source_address=p.source_address)
            self.error = None
        except OSError as e:
            self.error = e
            self.close()
        return self.socket is not None


def oserror_words(e: OSError) -> str:
    """An OSError in the status's words: ``connection refused``, ``timed out`` (its path or host as it is)."""
    return _lower_first(e.strerror or str(e) or type(e).__name__)


def _lower_first(text: str) -> str:  # "Connection refused", not "/dev/ttyUSB0" nor "PLC-1"
    return text[0].lower() + text[1:] if re.match(r"[A-Z][a-z]", text) else text


def lost_cause(e: Exception, client: str) -> str:
    """Why a connection was lost, without pymodbus' prefixes, timings and the client's description (``client``):
    ``connection unexpectedly closed``, the OS's error (``connection reset by peer``, ``input/output error``), or
    ``connection lost`` when pymodbus says no more than which client it was."""
    if isinstance(e, OSError):
        return oserror_words(e)
    if isinstance(e.__context__, OSError):  # pymodbus raises ConnectionException(str(client)) from None
        return oserror_words(e.__context__)
    text = str(getattr(e, "string", e)).removeprefix("[Connection] ").strip()
    text = text.removeprefix(client).lstrip(": ")
    text = re.sub(r" \d+\.\d+ seconds into .*", "", text).strip()
    return _lower_first(text) if text else "connection lost"
