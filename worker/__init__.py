"""App wiring: settings, logging, Kafka topics, the faust app and the CLI."""
