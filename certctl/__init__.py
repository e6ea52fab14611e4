"""certctl: ACME certificates for Kubernetes Ingresses, served by its own data plane."""

from __future__ import annotations

import importlib.metadata


def version() -> str:
    """The installed package's version ("unknown" when run from a source tree not installed)."""
    try:
        return importlib.metadata.version("certctl")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
