"""The shared runtime below both paths (graph_updater/, scorer/) and above schemas/: settings, the faust app
and topics, the micro-batch loop with dead letters, logging, and the Prometheus metrics and health endpoints.
``worker/`` (CLI, demo, analytics, process assembly) is the top layer; nothing here imports it."""
