"""The sections of the configuration: one pydantic model per ``[table]`` / ``EDGE_AGENT_<SECTION>__*`` group,
the source kinds (a discriminated union on ``kind``), and the small parsers they share. ``agent.settings`` puts
them together into ``Settings`` and loads them from the file, the env file and the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, SecretStr, Tag, ValidationInfo, field_validator
from pydantic_settings import NoDecode

ENV_PREFIX = "EDGE_AGENT_"
DEFAULT_ENV_FILE = Path("/etc/edge-agent/agent.env")
EX_CONFIG = 78  # sysexits.h: configuration error; the unit sets RestartPreventExitStatus=78
COMMAND_NAMES = ("ping", "status", "set-threshold", "calibrate", "reload-model", "feedback")  # agent/control.py


def _default_state_dir() -> Path:
    # systemd's StateDirectory= exports $STATE_DIRECTORY; root gets the FHS place; an unprivileged user running
    # the demo gets the XDG state directory instead of a permission error.
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/edge-agent")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge-agent"


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]

_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``24h``, ``7d`` → seconds; ValueError naming the rule otherwise."""
    t = text.strip().lower()
    unit = next((u for u in sorted(_UNITS, key=len, reverse=True) if t.endswith(u)), "")
    number = t[: len(t) - len(unit)].strip() if unit else t
    try:
        value = float(number) * (_UNITS[unit] if unit else 1.0)
    except ValueError:
        raise ValueError("must be seconds or a number with a unit s, m, h or d (e.g. 24h)") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive, finite duration")
    return value


class _Section(BaseModel):
    # allow_inf_nan=False: every float setting must be finite (NaN would switch alerting off silently, inf hang a
    # shutdown); sections added later inherit it
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


GATHER_MS = 40  # serial and MQTT sources: a busy stream is read at most this often (agent.sources.Pacer)
GATHER_DESCRIPTION = ('Busy stream (readings less than 50 ms apart, fewer than 64 and under 2 KiB per read): read it at most every GATHER_MS, so that its readings are handed over together (one wake-up of the source and pipeline threads for several readings, about half the CPU at 100 readings/s); a reading waits at most this long. 0 = hand every read over at once. A sensor at a slow rate is never delayed.')


class ReplaySourceSettings(_Section):
    """Replays a recorded CSV as if it were a live sensor."""

    kind: Literal["replay"] = Field("replay", description="Source of readings: replay | serial | mqtt | modbus.")
    path: Path | None = Field(None, description="Recorded CSV to replay (SKAB format: ';' separated, 'datetime' column); empty = the bundled demo recording.")
    speed: float = Field(0.0, ge=0, description="Replay pace: 1 = recorded pace, 10 = ten times faster, 0 = as fast as possible.")
    loop: bool = Field(False, description="Start again at the end of the file instead of draining and exiting.")
    sensor: str = Field("replay", min_length=1, description="Sensor id given to the replayed readings.")


class SerialSourceSettings(_Section):
    """Reads lines from a serial port (USB-serial adapter, RS-485 converter, pty) with pyserial."""

    kind: Literal["serial"] = "serial"
    port: str = Field(..., min_length=1, description="Device path (prefer /dev/serial/by-id/...) or a pyserial URL.")
    baudrate: int = Field(115200, gt=0, description="Line speed in baud.")
    parity: Literal["N", "E", "O", "M", "S"] = Field("N", description="Parity: N, E, O, M or S.")
    stopbits: float = Field(1, description="Stop bits: 1, 1.5 or 2.")
    bytesize: int = Field(8, ge=5, le=8, description="Data bits: 5 to 8.")
    terminator: Literal["lf", "crlf", "cr"] = Field("lf", description="Line terminator: lf, crlf or cr.")
    max_line_bytes: int = Field(4096, ge=16, description="Longer lines are dropped and counted as line_too_long.")
    format: Literal["csv", "json", "kv"] = Field("csv", description="Line format: csv, json (one object per line) or kv (name=value pairs).")
    channels: CommaList = Field(default_factory=list, description="csv: channel names in column order, comma-separated; empty = take them from a header line.")
    delimiter: str = Field(",", min_length=1, max_length=1, description="csv: field separator.")
    checksum: bool = Field(False, description="Require an NMEA-style '*hh' XOR checksum at the end of each line.")
    timestamp_field: str = Field("ts", description="Name of the device timestamp field/column (epoch seconds or ISO 8601); absent = time of receipt.")
    sensor: str = Field("serial", min_length=1, description="Sensor id given to readings from this port.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First retry delay after the port disappears.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Cap of the exponential reconnect backoff.")
    gather_ms: int = Field(GATHER_MS, ge=0, le=1000, description=GATHER_DESCRIPTION)

    _split = field_validator("channels", mode="before")(_split_list)

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, v: float) -> float:
        if v not in (1, 1.5, 2):
            raise ValueError("must be 1, 1.5 or 2")
        return v


class MqttSourceSettings(_Section):
    """Subscribes to sensor topics on an MQTT broker (by default the upstream broker)."""

    kind: Literal["mqtt"] = "mqtt"
    topics: CommaList = Field(..., min_length=1, description="Topic filters to subscribe to, comma-separated; wildcards allowed.")
    sensor_pattern: str = Field("", description="Topic pattern naming the sensor level, e.g. plant/{sensor}/telemetry; empty = the whole topic.")
    channel: str = Field("value", description="Channel name for payloads that are a bare number.")
    timestamp_field: str = Field("ts", description="Timestamp field in JSON payloads (epoch seconds or ISO 8601); absent = time of receipt.")
    qos: int = Field(0, ge=0, le=1, description="Subscription QoS: 0 or 1.")
    max_payload_bytes: int = Field(65536, ge=64, le=16 * 1024 * 1024, description="A bigger payload is counted reject.payload_too_large and not parsed; raise it for block payloads.")
    max_block_samples: int = Field(10000, ge=1, le=1_000_000, description="Samples per channel a block payload (period_s and values arrays) may carry; more: reject.block_too_large.")
    broker_host: str = Field("", description="Sensor broker host; empty = the upstream broker (EDGE_AGENT_MQTT__HOST).")
    broker_port: int = Field(0, ge=0, le=65535, description="Sensor broker port; 0 = the upstream port.")
    broker_username: str = Field("", description="Sensor broker user name; empty = the upstream one.")
    broker_password_file: Path | None = Field(None, description="File holding the sensor broker password; empty = the upstream one.")
    broker_tls: bool = Field(False, description="Separate sensor broker (BROKER_HOST or BROKER_PORT set) over TLS; the upstream broker itself is always used with EDGE_AGENT_MQTT__TLS*. Refused: upstream credentials in clear text when the upstream uses TLS.")
    broker_ca_file: Path | None = Field(None, description="Separate sensor broker: CA certificate(s) to verify it with; empty = the system's CAs.")
    broker_cert_file: Path | None = Field(None, description="Separate sensor broker: client certificate for mutual TLS.")
    broker_key_file: Path | None = Field(None, description="Separate sensor broker: private key of the client certificate.")
    broker_tls_insecure: bool = Field(False, description="Separate sensor broker: skip its host name check (never in production).")
    gather_ms: int = Field(GATHER_MS, ge=0, le=1000, description=GATHER_DESCRIPTION)

    _split = field_validator("topics", mode="before")(_split_list)

    @field_validator("topics")
    @classmethod
    def _filters(cls, v: list[str]) -> list[str]:
        from agent.sources.mqtt_topics import check_filter  # checked here, not only when the source starts

        for t in v:
            check_filter(t)
        return v

    @field_validator("sensor_pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        from agent.sources.mqtt_topics import compile_sensor_pattern

        compile_sensor_pattern(v)
        return v


class ModbusSourceSettings(_Section):
    """Polls Modbus RTU/TCP devices declared in the configuration file ([modbus.buses.NAME], [modbus.devices.NAME]; docs/modbus.md)."""

    kind: Literal["modbus"] = "modbus"
    devices: CommaList = Field(default_factory=list, description="Names of the [modbus.devices.NAME] to poll, comma-separated; empty = every declared device.")

    _split = field_validator("devices", mode="before")(_split_list)


def _source_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "replay"))
    return str(getattr(value, "kind", "replay"))


SourceSettings = Annotated[
    Union[
        Annotated[ReplaySourceSettings, Tag("replay")],
        Annotated[SerialSourceSettings, Tag("serial")],
        Annotated[MqttSourceSettings, Tag("mqtt")],
        Annotated[ModbusSourceSettings, Tag("modbus")],
    ],
    Discriminator(_source_kind, custom_error_type="source_kind", custom_error_message="must be replay, serial, mqtt or modbus"),
]
SOURCE_KINDS: dict[str, type[_Section]] = {"replay": ReplaySourceSettings, "serial": SerialSourceSettings,
                                           "mqtt": MqttSourceSettings, "modbus": ModbusSourceSettings}
FILE_ONLY = ("modbus", "assets")  # settings that exist only in the configuration file (agent/config_file.py)


class ModelSettings(_Section):
    """Which model to run and how."""

    path: Path | None = Field(None, description="A bundled model by name (generic, pump-anomaly, machine-failure), a .tflite with its JSON sidecar beside it, or a generic detector spec (.json); empty = generic.")
    runtime: Literal["auto", "ai_edge_litert", "tflite_runtime"] = Field("auto", description="TFLite runtime: auto (ai_edge_litert first, then tflite_runtime), ai_edge_litert or tflite_runtime.")
    threshold: float | None = Field(None, gt=0, description="Score threshold; empty = calibrated on site, else the sidecar's default.")
    num_threads: int = Field(1, ge=1, le=4, description="Interpreter threads (1 is fastest for one window at a time).")


MAX_K_OF_N = 10_000  # k and n: the debounce keeps n windows' verdicts per sensor


class DecisionSettings(_Section):
    """Alert state machine; empty values take the model sidecar's defaults."""

    k: int | None = Field(None, ge=1, le=MAX_K_OF_N, description="Raise when k of the last n windows score over the threshold (1 to 10000).")
    n: int | None = Field(None, ge=1, le=MAX_K_OF_N, description="Length of the k-of-n debounce (1 to 10000).")
    clear_ratio: float | None = Field(None, gt=0, le=1, description="Hysteresis: clear when k of the last n windows score under threshold x clear_ratio.")
    recede_ratio: float | None = Field(None, ge=0, lt=1, description="Also clear when k of the last n windows score under recede_ratio x the alert's peak (the event is over, the machine settled a little away from its teach-in); 0 = off, empty = the model's default.")

    @field_validator("n")
    @classmethod
    def _k_le_n(cls, v: int | None, info: ValidationInfo) -> int | None:
        k = info.data.get("k")
        if v is not None and k is not None and k > v:
            raise ValueError(f"must be at least k ({k}, EDGE_AGENT_DECISION__K or decision.k in the file)")
        return v


class CalibrationSettings(_Section):
    """Teach-in: the first readings after install are taken as normal."""

    samples: int | None = Field(None, ge=0, le=1_000_000, description="Readings taken as normal to fit normalisation and threshold on site; 0 = off, empty = the sidecar's default.")
    duration: float | None = Field(None, gt=0, description="Teach-in as a span of data time instead: seconds, or with a unit (90s, 15m, 24h, 7d); with SAMPLES both must be reached. Make it cover the machine's normal cycle: a teach-in that has not seen a normal event alerts on it.")

    timezone: str = Field("UTC", min_length=1, description="The clock the generic detector's daily profile follows (a teach-in of three days or more): the machine's local time zone as an IANA name (Europe/Berlin), so that a daylight-saving change does not shift its day by an hour; UTC = none.")

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) and v.strip() else v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from agent.season import zone

        zone(v)  # ValueError naming the rule
        return v


class MqttSettings(_Section):
    """The upstream broker: alerts, summaries and status go there."""

    host: str = Field("localhost", min_length=1, description="Upstream broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Upstream broker port.")
    topic_prefix: str = Field("edge", min_length=1, description="Topics are {topic_prefix}/{device_id}/...")
    client_id: str = Field("", description="MQTT client id; empty = edge-agent-{device_id}.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive; the broker publishes the last will after 1.5x this.")
    username: str = Field("", description="User name for the upstream broker; empty = anonymous.")
    password_file: Path | None = Field(None, description="File holding the password; empty = $CREDENTIALS_DIRECTORY/mqtt-password when present.")
    password: SecretStr | None = Field(None, description="Password given directly (prefer password_file or a systemd credential).")
    max_inflight: int = Field(10, ge=1, le=100, description="QoS 1 messages awaiting PUBACK at once.")
    ack_timeout_s: float = Field(60.0, gt=0, description="No PUBACK for this long while messages await one: the connection counts as broken (a broker or middlebox that swallows them while the connection and its pings stay alive) and is dropped; the reconnection sends them again (each alert's rows in order). Counted from the oldest unacknowledged publish or the last PUBACK for the oldest one, whichever is later, so a slow link whose PUBACKs still come never trips it (a PUBACK for a newer message does not count: PUBACKs come in publish order, so it says the older one was lost); keep it above the time the largest message takes to send.")
    tls: bool = Field(False, description="Connect with TLS (port 8883 by convention).")
    ca_file: Path | None = Field(None, description="CA certificate(s) to verify the broker with; empty = the system's CAs.")
    cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(None, description="Private key of the client certificate.")
    tls_insecure: bool = Field(False, description="Skip the broker host name check (never in production: it allows impersonation).")
    protocol: Literal["auto", "5", "3.1.1"] = Field("auto", description="MQTT version: auto (MQTT 5, and 3.1.1 when the broker refuses 5 as an unsupported protocol version or ends 3 MQTT 5 connections in a row before answering), 5 or 3.1.1. Over MQTT 5 the broker says in its PUBACK when it refuses an alert (ACL, size): it is kept in the dead_letter table, never lost in silence.")

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_number(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v  # protocol = 5 in TOML

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, v: str) -> str:
        if any(c in v for c in "+#") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must not contain + or # nor start or end with /")
        return v


class OutboxSettings(_Section):
    """Bounds of the store-and-forward outbox."""

    max_rows: int = Field(10_000, ge=10, description="Messages kept at most; past this the oldest summaries are dropped first, alerts last.")
    max_bytes: int = Field(16 * 2**20, ge=65536, description="Payload bytes kept at most (same drop policy).")


class AlertSettings(_Section):
    """Alert policy on top of the model's decision: severity, cooldown, rate limit, evidence."""

    critical_margin: float = Field(1.0, gt=0, description="Severity critical when the score exceeds the threshold by this fraction (1.0 = twice the threshold), else warning.")
    cooldown_s: float = Field(0.0, ge=0, description="After an alert clears, a new one on the same sensor within this many seconds (data time) is held back and counted, and raised when they are over if its fault is still on.")
    rate_limit_per_hour: int = Field(30, ge=0, description="At most this many alerts raised per hour (data time); more are held back and counted, and raised when the hour has room if their fault is still on; 0 = no limit.")
    evidence_windows_before: int = Field(5, ge=0, le=1000, description="Windows kept as evidence before the one that raised an alert.")
    evidence_max_bytes: int = Field(16 * 2**20, ge=65536, description="Evidence kept in STATE_DIR at most; the oldest goes first.")
    evidence_inline_max_bytes: int = Field(0, ge=0, description="Attach the evidence to the alert message when it is at most this big; 0 = never (fetch it by evidence_id).")


class CleaningSettings(_Section):
    """Cleaning and alignment of readings before the model (docs/cleaning.md)."""

    ranges: str = Field("", description="Valid ranges channel:min:max, comma-separated (Current:0:50,Pressure:-1:10; an empty bound is open); they override the model sidecar's valid_ranges.")
    max_hold_s: float = Field(5.0, ge=0, description="A missing or refused value is replaced by the channel's last good value at most this old (data time), or 3 of the sensor's learnt reporting intervals when that is longer; older: the channel is stale and the sensor's windows restart; a live source with no reading at all for this long (or 3 of its arrival intervals) is `no readings arriving`; 0 = off.")
    spike_window: int = Field(0, ge=0, le=101, description="Hampel spike filter over this many previous values per channel (e.g. 7); a spike is replaced by their median; 0 = off (the bundled model wants raw data).")
    spike_sigmas: float = Field(5.0, gt=0, description="Spike filter: a value further than this many robust sigmas (1.4826 x MAD) from the median is a spike.")
    align_period_s: float = Field(0.0, ge=0, description="Merge the channels of all sensors into one reading every this many seconds of data time (sensors on separate topics or lines); 0 = off.")
    align_tolerance_s: float = Field(0.0, ge=0, description="Alignment: a channel's latest value older than this at a tick is missing there (counted); 0 = one align period.")
    align_sensor: str = Field("aligned", min_length=1, pattern=r"^[^/+#]+$", description="Alignment: sensor id of the merged readings (in alerts and status).")

    @field_validator("ranges")
    @classmethod
    def _ranges(cls, v: str) -> str:
        from agent.clean import parse_ranges

        parse_ranges(v)  # ValueError names the bad item
        return v

    max_time_jump_s: float = Field(600.0, ge=0, description="A reading more than this many seconds ahead of its sensor's time (by the clock since its last reading) or behind it is refused alone (future_ts/past_ts); 5 such readings in a row that agree are taken as a stepped device clock (gaps.time_step, warning); 0 = off.")
    max_sensors: int = Field(1000, ge=0, description="Sensors tracked at most; readings of new sensors beyond this are refused and counted (too_many_sensors); 0 = no limit.")
    sensor_idle_s: float = Field(86400.0, ge=0, description="A sensor that sent nothing for this many seconds is forgotten (its windows, alert state, evidence buffer); 0 = never.")

    @field_validator("spike_window")
    @classmethod
    def _window(cls, v: int) -> int:
        if v in (1, 2):
            raise ValueError("must be 0 (off) or at least 3")
        return v


class CommandSettings(_Section):
    """Commands under {prefix}/{device_id}/cmd/<name>."""

    enabled: bool = Field(True, description="Accept commands over MQTT; false = do not even subscribe.")
    allow: CommaList = Field(list(COMMAND_NAMES), description="Commands carried out, comma-separated; any other gets a not-ok reply (the broker's ACL decides who may send them).")
    rate_per_minute: int = Field(60, ge=1, description="Commands carried out per minute at most (token bucket); more are dropped without a reply, counted (commands.dropped) and logged once per burst.")
    burst: int = Field(10, ge=1, description="Commands accepted at once before the rate limit applies.")
    model_dirs: CommaList = Field(default_factory=list, description="Directories reload-model may load models from, comma-separated; empty = the bundled models and the configured model's directory.")
    threshold_min: float | None = Field(None, gt=0, description="Lowest threshold set-threshold accepts; empty = a tenth of the model's threshold.")
    threshold_max: float | None = Field(None, gt=0, description="Highest threshold set-threshold accepts; empty = ten times the model's threshold.")

    _split = field_validator("allow", "model_dirs", mode="before")(_split_list)

    @field_validator("allow")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [c for c in v if c not in COMMAND_NAMES]
        if unknown:
            raise ValueError(f"unknown command(s) {', '.join(unknown)}; known: {', '.join(COMMAND_NAMES)}")
        return v

    @field_validator("model_dirs")
    @classmethod
    def _absolute(cls, v: list[str]) -> list[str]:
        relative = [d for d in v if not d.startswith("/")]
        if relative:
            raise ValueError(f"must be absolute paths: {', '.join(relative)}")
        return v


class AdviceSettings(_Section):
    """Parameter advice for a person when a classifier raises an alert (models whose sidecar has an advice section)."""

    enabled: bool = Field(True, description="Search for and publish advice (topic advice) when a classifier model with an advice section raises an alert; the agent never writes to a device.")
    rate_limit_per_hour: int = Field(30, ge=0, description="At most this many advice messages per hour (data time); more are counted (advice.suppressed) and not searched; 0 = no limit.")
    adjustable: str = Field("", description="Adjustable channels and their bounds as channel:min:max:step, comma-separated (Rotational speed [rpm]:1200:2800:10); they replace the sidecar's list; empty = the sidecar's.")

    @field_validator("adjustable")
    @classmethod
    def _adjustable(cls, v: str) -> str:
        from agent.advice import parse_adjustable

        parse_adjustable(v)  # ValueError names the bad item
        return v
