"""The admin address of each process: Prometheus /metrics, /healthz and /readyz probes,
and the read-only dashboard with its JSON API (`server`, `health`, `dashboard`, `events`).

It binds where `--metrics-address`/`--metrics-port` say, loopback by default, and
has no login: it is for the operator and Prometheus, never for the public.
"""
