"""The parts of ``edge-agent evaluate``: ``scoring`` (the protocol: pure metrics), ``runner`` (recordings through
the daemon's pipeline; the :class:`Evaluation` API), ``report`` (tables, JSON entries, progress) and ``plot``.
agent/evaluate.py is the command and re-exports the public names."""
