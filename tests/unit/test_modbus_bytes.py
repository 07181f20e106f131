"""The Modbus source's bytes_in (``source.bytes``, the stats' bandwidth ratio) counts every byte of an answer once.

pymodbus (3.16, sync clients) hands ``trace_packet(False, buffer)`` the whole answer received so far each time a
piece of it arrives (transaction.sync_get_response: ``databuffer += data`` then the trace): on an RTU line an
answer comes in pieces, and counting each buffer counted its first bytes again and again (a 125-byte answer in
16-byte pieces counted 573). The bus' own trace function, fed the buffers as pymodbus feeds them.
"""

from __future__ import annotations

from agent.counters import Counters
from agent.modbus_config import BusSettings
from agent.sources.modbus import Bus


def _bus() -> Bus:
    return Bus("rs485-1", BusSettings(kind="rtu", port="/dev/null-modem-test"), [], Counters())


def _answer(n: int) -> bytes:
    return bytes((7 * i + 3) % 256 for i in range(n))


def test_an_answer_passed_piece_by_piece_is_counted_once() -> None:
    bus = _bus()
    answer = _answer(125)  # 60 registers: unit, function, byte count, 120 bytes, CRC
    bus._trace(True, b"\x01\x03\x00\x00\x00\x3c\x45\xdb")  # noqa: SLF001 - pymodbus' trace_packet hook
    for end in [*range(16, 125, 16), 125]:
        bus._trace(False, answer[:end])  # noqa: SLF001
    assert bus.counters.get("source.bytes") == 125


def test_each_request_starts_a_new_answer() -> None:
    bus = _bus()
    first, second = _answer(125), _answer(9)
    for answer in (first, second, second):  # the same short answer twice in a row still counts twice
        bus._trace(True, b"\x01\x03\x00\x00\x00\x02\xc4\x0b")  # noqa: SLF001
        bus._trace(False, answer[:4])  # noqa: SLF001
        bus._trace(False, answer)  # noqa: SLF001
    assert bus.counters.get("source.bytes") == 125 + 9 + 9

