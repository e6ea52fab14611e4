"""A JSON-over-HTTPS client shared by the providers whose DNS API is plain REST.

It sorts every failure into the DNS-01 error kinds (401/403: credentials
rejected; 408/429/5xx and transport errors: temporary; other statuses are
handed back for the provider to judge) and keeps credentials out of
messages: they travel in headers, and messages name only the method, the
URL path and what the API said.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from certctl.solvers.dns01 import errors

_TEMPORARY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_DETAIL = 300


@dataclass(frozen=True, kw_only=True)
class Response:
    status: int
    body: Any
    """The decoded JSON body; None for an empty one, the text if it is not JSON."""


class JsonApi:
    """One API (`name` is for messages: "Cloudflare API"), its base URL and auth headers."""

    def __init__(
        self, *, name: str, base_url: str, headers: Mapping[str, str], timeout: float
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._session = requests.Session()
        self._session.headers.update({"Accept": "application/json",
                                      "User-Agent": "certctl-dns01", **headers})
        self._timeout = timeout

    def __repr__(self) -> str:  # the session holds credentials: show none of it
        return f"<{self.name} at {self.base_url}>"

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        expect: Collection[int] = (200,),
        allow: Collection[int] = (),
    ) -> Response:
        """Send one request; statuses in `expect` or `allow` come back, others raise.

        `allow` is for statuses the caller turns into its own error (a 404
        for a zone that does not exist), `expect` for success.
        """
        url = f"{self.base_url}{path}"
        what = f"{method} {url}"
        try:
            reply = self._session.request(method, url, params=params, json=json,
                                          timeout=self._timeout)
        except requests.Timeout as err:
            raise errors.TemporaryError(
                f"{self.name}: {what} timed out after {self._timeout:g}s") from err
        except requests.RequestException as err:
            raise errors.TemporaryError(f"{self.name}: {what} failed: {err}") from err
        response = Response(status=reply.status_code, body=_decode(reply))
        if reply.status_code in expect or reply.status_code in allow:
            return response
        raise self.failure(response, what=what)

    def failure(self, response: Response, *, what: str) -> errors.Dns01Error:
        """The error for an unexpected answer, classified by status."""
        message = (f"{self.name}: {what} answered {response.status}"
                   f"{': ' + api_message(response.body) if response.body else ''}")
        if response.status in (401, 403):
            return errors.CredentialsRejected(f"{message} (the credentials were refused)")
        if response.status in _TEMPORARY_STATUSES:
            return errors.TemporaryError(message)
        return errors.ConfigError(message)


def api_message(body: Any) -> str:
    """The human part of an API error body, whichever convention the API follows."""
    if isinstance(body, Mapping):
        for key in ("errors", "message", "error", "detail", "reason"):
            value = body.get(key)
            if isinstance(value, list) and value:
                return "; ".join(api_message(item) for item in value)[:_MAX_DETAIL]
            if isinstance(value, Mapping):
                return api_message(value)
            if value:
                code = body.get("code")
                return (f"{value} (code {code})" if code else str(value))[:_MAX_DETAIL]
    return str(body)[:_MAX_DETAIL]


def _decode(reply: requests.Response) -> Any:
    if not reply.content:
        return None
    try:
        return reply.json()
    except ValueError:
        return reply.text[:_MAX_DETAIL]
