"""`edge serve`: the always-on camera service (config, HTTP, metrics, systemd notify, service outputs)."""
