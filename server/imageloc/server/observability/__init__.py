"""Observability: Prometheus metrics, OpenTelemetry traces and the server log, a module each."""
