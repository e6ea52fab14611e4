"""What can go wrong while solving DNS-01, sorted by what the caller should do.

Messages are shown to users (Challenge and Certificate status, events), so
they name the server, zone, field or Secret involved, and never a secret
value: no TSIG secret, API token or password ends up in a message.
"""

from __future__ import annotations

from typing import ClassVar


class Dns01Error(Exception):
    """Base class; `permanent` says whether trying again without a change can help."""

    permanent: ClassVar[bool] = False


class ConfigError(Dns01Error):
    """The solver's configuration, or a Secret it names, is wrong or missing."""

    permanent = True


class CredentialsRejected(Dns01Error):
    """The DNS server or API refused the credentials (TSIG BADSIG/BADKEY, HTTP 401/403)."""

    permanent = True


class TemporaryError(Dns01Error):
    """A timeout, an unreachable server, a server error or a rate limit: retry later."""
