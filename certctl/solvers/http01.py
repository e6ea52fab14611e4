"""HTTP-01 self-check: fetch the challenge file the way the ACME server will.

Run before `answer_challenge`: answering a challenge the server cannot yet
fetch fails the authorization for good (and counts against rate limits),
while a failed self-check only means "try again in a moment".
"""

from __future__ import annotations

import http.client
import re
from typing import Final

CHALLENGE_PATH_PREFIX = "/.well-known/acme-challenge/"
TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""A token the data plane answers for: base64url without padding (RFC 8555 8.3).

ACME servers use 128 bits or more (22+ characters; Let's Encrypt and Pebble
43); the upper bound only keeps junk out. Anything else (`..`, `/`, `%`,
`.`) is never looked up: it cannot name a challenge, only a path trick.
"""
_MAX_BODY = 8192
"""More than any key authorization; validators cap the body similarly."""


class SelfCheckFailed(Exception):
    """The challenge response is not (yet) served where the ACME server will look."""


def self_check(
    *,
    host: str,
    token: str,
    expected_key_authorization: str,
    port: int = 80,
    connect_address: str | None = None,
    timeout: float = 5.0,
) -> None:
    """GET ``http://host:port/.well-known/acme-challenge/<token>`` and compare the body.

    With `connect_address`, the TCP connection goes there while the request
    still says ``Host: host`` (curl's ``--resolve``): the machine's resolver
    may not know `host`, or may point at something other than certctl's data
    plane. Surrounding whitespace in the body is ignored, as ACME servers do.
    A token that is not well formed (`TOKEN`) fails without a request: the
    data plane would never answer it, and it must not shape the URL.

    Redirects are not followed: certctl's data plane answers challenges
    itself, so a 3xx means something else sits in front of it; the
    failure message names the Location. Raises `SelfCheckFailed`.
    """
    if not TOKEN.fullmatch(token):
        raise SelfCheckFailed(f"HTTP-01 self-check failed: malformed token {token[:100]!r}")
    url = f"http://{_authority(host, port)}{CHALLENGE_PATH_PREFIX}{token}"
    prefix = f"HTTP-01 self-check failed: GET {url}"
    connection = http.client.HTTPConnection(connect_address or host, port, timeout=timeout)
    try:
        connection.request(
            "GET",
            CHALLENGE_PATH_PREFIX + token,
            headers={"Host": _authority(host, port), "User-Agent": "certctl-self-check"},
        )
        response = connection.getresponse()
        body = response.read(_MAX_BODY)
    except (OSError, http.client.HTTPException) as error:
        via = f" (connecting to {connect_address})" if connect_address else ""
        raise SelfCheckFailed(f"{prefix}{via}: {_describe(error)}") from error
    finally:
        connection.close()
    if response.status != 200:
        location = response.getheader("Location")
        suffix = f" redirecting to {location}" if location else ""
        raise SelfCheckFailed(f"{prefix} returned {response.status}{suffix}")
    got = body.decode("utf-8", errors="replace").strip()
    if got != expected_key_authorization:
        raise SelfCheckFailed(
            f"{prefix} returned unexpected content {got[:100]!r},"
            f" expected {expected_key_authorization!r}"
        )


def _authority(host: str, port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == 80 else f"{name}:{port}"


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):  # socket.timeout's str() is just "timed out" too
        return "timed out"
    return str(error) or type(error).__name__
