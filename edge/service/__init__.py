"""`edge serve` as a long-running service: config, HTTP server, Prometheus metrics, systemd notify, install-service.

Builds on `edge.runtime` and `edge.core`."""
