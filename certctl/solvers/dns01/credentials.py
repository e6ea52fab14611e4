"""Provider credentials, read from Secrets through the store.

A solver of a namespaced Issuer reads Secrets of the Issuer's namespace; a
ClusterIssuer's read the cluster resource namespace, as in cert-manager.
Values are returned, never logged, and errors name the Secret and key but
not what is in them.
"""

from __future__ import annotations

import base64
import binascii

from certctl.api.resources import SecretKeySelector
from certctl.solvers.dns01 import errors
from certctl.store.interface import Store


class SecretReader:
    """Reads one key of a Secret in `namespace`; `stringData` wins over `data`, as on apply."""

    def __init__(self, *, store: Store, namespace: str) -> None:
        self._store = store
        self.namespace = namespace

    def read(self, ref: SecretKeySelector, *, field: str) -> str:
        """The value (UTF-8, surrounding whitespace removed), or ConfigError naming `field`.

        Whitespace goes because `echo secret | base64` and editors add a
        trailing newline that no DNS API accepts.
        """
        secret = self._store.get(kind="Secret", namespace=self.namespace, name=ref.name)
        where = f"{field}: Secret {self.namespace}/{ref.name}"
        if secret is None:
            raise errors.ConfigError(f"{where} not found")
        string_data = secret.get("stringData") or {}
        if isinstance(string_data.get(ref.key), str):
            return str(string_data[ref.key]).strip()
        encoded = (secret.get("data") or {}).get(ref.key)
        if not isinstance(encoded, str):
            raise errors.ConfigError(f"{where} has no key {ref.key!r}")
        try:
            return base64.b64decode(encoded, validate=True).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError) as err:
            raise errors.ConfigError(
                f"{where} key {ref.key!r} is not base64-encoded UTF-8 text") from err
