"""What a failed or dropped connection is put down to (agent/mqtt_client.py): the hint names the likely cause
and the setting to check, without blaming TLS for a broker that merely restarted."""

from __future__ import annotations

from agent.mqtt_client import explain_receive_failure


def test_a_connection_reset_before_connack_names_a_restart_and_tls():
    why = explain_receive_failure("failed to receive on socket: [Errno 104] Connection reset by peer")
    assert "Connection reset by peer" in why
    assert "a broker restarting does this" in why and "at every attempt" in why and "check EDGE_AGENT_MQTT__TLS" in why


def test_a_missing_client_certificate_names_the_settings():
    why = explain_receive_failure("failed to receive on socket: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] alert",
                                  "EDGE_AGENT_SOURCE__BROKER_")
    assert why == "requires a client certificate: set EDGE_AGENT_SOURCE__BROKER_CERT_FILE and EDGE_AGENT_SOURCE__BROKER_KEY_FILE"
