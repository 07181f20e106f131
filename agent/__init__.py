"""edge-agent: on-device machine-health inference for Raspberry-Pi-class gateways."""

__version__ = "0.1.0"
