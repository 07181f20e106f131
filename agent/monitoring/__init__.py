"""The parts of ``edge-agent monitor``: ``fleet`` (the state, pure), ``render`` (the table) and ``client`` (MQTT).
agent/monitor.py is the command and re-exports the public names."""
