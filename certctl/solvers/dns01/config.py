"""Typed reading of one provider's configuration (`solvers[i].dns01.<provider>`).

The issuer parser keeps a provider's configuration as the raw mapping, since
only the provider knows its fields (third-party providers define their own).
Providers read it through `ProviderConfig`, whose errors name the full field
path (`spec.acme.solvers[0].dns01.rfc2136.tsigKeyName: is required`) like
the rest of certctl's validation, and refuse unknown fields so a typo does
not silently fall back to a default.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

from certctl.api.resources import SecretKeySelector
from certctl.solvers.dns01 import errors


class ProviderConfig:
    """The raw mapping of one provider, and where it sits in the issuer (`path`)."""

    def __init__(self, raw: Mapping[str, Any], *, path: str) -> None:
        self.raw = raw
        self.path = path

    def fail(self, key: str | None, message: str) -> errors.ConfigError:
        """The error to raise for `key` (None: the whole mapping)."""
        where = f"{self.path}.{key}" if key else self.path
        return errors.ConfigError(f"{where}: {message}")

    def check_fields(
        self, *, known: Collection[str], unsupported: Collection[str] = ()
    ) -> None:
        """Refuse keys that are not `known`, and `unsupported` ones unless left empty."""
        for key, value in self.raw.items():
            if key in known:
                continue
            if key in unsupported:
                if value:
                    raise self.fail(key, "is a cert-manager field certctl does not support;"
                                         " remove it")
                continue
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else (
                f"expected one of: {', '.join(sorted(known))}")
            raise self.fail(str(key), f"unknown field; {hint}")

    def optional_str(self, key: str) -> str | None:
        """A string field; null and "" both read as unset, like Go's omitempty."""
        value = self.raw.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {type(value).__name__}; quote the value")
        return value

    def required_str(self, key: str) -> str:
        value = self.optional_str(key)
        if value is None:
            raise self.fail(key, "is required")
        return value

    def optional_mapping(self, key: str) -> Mapping[str, Any] | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a mapping, got {type(value).__name__}")
        return value

    def secret_ref(self, key: str) -> SecretKeySelector | None:
        """A `{name, key}` Secret reference; both parts are required when it is set."""
        value = self.optional_mapping(key)
        if not value:
            return None
        nested = ProviderConfig(value, path=f"{self.path}.{key}")
        nested.check_fields(known=("name", "key"))
        return SecretKeySelector(name=nested.required_str("name"), key=nested.required_str("key"))

    def required_secret_ref(self, key: str) -> SecretKeySelector:
        ref = self.secret_ref(key)
        if ref is None:
            raise self.fail(key, "is required: a Secret reference with name and key")
        return ref

    def field(self, key: str) -> str:
        """The dotted path of `key`, for messages about it."""
        return f"{self.path}.{key}"
