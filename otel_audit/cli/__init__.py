"""The ``otel-audit`` command line."""
