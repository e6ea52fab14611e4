"""Typed errors of the ACME client wrapper.

Callers branch on these types, never on the `acme` library's exceptions or on
message strings: the wrapper translates everything at its boundary.

`AcmeProblem` carries an RFC 8555 problem document (`typ` is the full URN,
`code` the short ACME code such as ``rateLimited``). The problem types a
reconciler reacts to differently have their own subclasses; any other
problem is a plain `AcmeProblem`.
"""

from __future__ import annotations

import datetime
from typing import Any

ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"


class AcmeError(Exception):
    """Base class of every error raised by `certctl.issuers.acme`."""


class AcmeUnreachable(AcmeError):
    """The ACME server could not be reached: DNS, TCP, TLS verification or timeout.

    The message names the URL; a retry later may succeed.
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url

    def __reduce__(self) -> tuple[Any, ...]:  # for `client_process`: kw-only arguments
        return _rebuilt, (type(self), self.args, {"url": self.url})


class AcmeNotADirectory(AcmeError):
    """The configured server URL answered, but not with an ACME directory.

    Usually a typo in `spec.acme.server` (e.g. the CA's home page instead of
    its `/directory` URL); retrying will not help until the spec changes.
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url

    def __reduce__(self) -> tuple[Any, ...]:  # for `client_process`: kw-only arguments
        return _rebuilt, (type(self), self.args, {"url": self.url})


class AcmeProtocolError(AcmeError):
    """The server answered something that is neither success nor a problem document."""


class AcmeNotFound(AcmeProtocolError):
    """The server answered 404 to a request for an order, authorization, challenge
    or certificate URL it gave out: it does not know that resource (any more).

    A restarted or reset CA (Pebble keeps everything in memory) forgets its
    orders; retrying the URL will never help, the caller must start over with
    a new order. Pebble sends this 404 without a problem document, so it
    cannot be an `AcmeProblem`.
    """


class AcmeConfigError(AcmeError, ValueError):
    """The client cannot be built: unusable account key or CA bundle, unknown profile.

    Messages never include key material.
    """


class AccountNotRegistered(AcmeError):
    """An account-bound request was made before `register()` (or a known account URI)."""


class AcmeProblem(AcmeError):
    """An RFC 7807 problem document returned by the ACME server.

    `retry_after` is set when the response carried a Retry-After header
    (typically with rateLimited). `subproblems` holds per-identifier problems
    of a compound error as ``(identifier value or None, typ, detail)``.
    """

    def __init__(
        self,
        *,
        typ: str,
        detail: str,
        status: int | None = None,
        retry_after: datetime.datetime | None = None,
        subproblems: tuple[tuple[str | None, str, str], ...] = (),
    ) -> None:
        message = f"{typ}: {detail}" if detail else typ
        for identifier, sub_typ, sub_detail in subproblems:
            message += f"\n  {identifier or '-'}: {sub_typ}: {sub_detail}"
        super().__init__(message)
        self.typ = typ
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.subproblems = subproblems

    def __reduce__(self) -> tuple[Any, ...]:  # for `client_process`: kw-only arguments
        return _rebuilt, (type(self), (), {
            "typ": self.typ, "detail": self.detail, "status": self.status,
            "retry_after": self.retry_after, "subproblems": self.subproblems})

    @property
    def code(self) -> str | None:
        """The short ACME code (``badCSR``), or None for non-ACME problem types."""
        if self.typ.startswith(ACME_ERROR_PREFIX):
            return self.typ[len(ACME_ERROR_PREFIX) :]
        return None


class RateLimited(AcmeProblem):
    """rateLimited: wait until `retry_after` (if given) before trying again."""


class BadNonce(AcmeProblem):
    """badNonce that survived the retries.

    The `acme` library retries a badNonce once and the wrapper retries the
    request a few more times, so this only surfaces when the server rejects
    nonces persistently.
    """


class AccountDoesNotExist(AcmeProblem):
    """accountDoesNotExist: the server forgot the account (or it never existed).

    Happens after a Pebble restart or if the account was deactivated; the
    caller should call `AcmeClient.register()` again and start a new order.
    """


class OrderNotReady(AcmeProblem):
    """orderNotReady: finalize was sent before every authorization was valid."""


class Unauthorized(AcmeProblem):
    """unauthorized: e.g. the account may not access this order, or a policy forbids the name."""


PROBLEM_CLASSES: dict[str, type[AcmeProblem]] = {
    ACME_ERROR_PREFIX + "rateLimited": RateLimited,
    ACME_ERROR_PREFIX + "badNonce": BadNonce,
    ACME_ERROR_PREFIX + "accountDoesNotExist": AccountDoesNotExist,
    ACME_ERROR_PREFIX + "orderNotReady": OrderNotReady,
    ACME_ERROR_PREFIX + "unauthorized": Unauthorized,
}
"""Problem type URN -> the most specific exception class for it."""


def _rebuilt(cls: type[AcmeError], args: tuple[Any, ...], kwargs: dict[str, Any]) -> AcmeError:
    """An error as `__reduce__` took it apart (pickle calls it)."""
    return cls(*args, **kwargs)
