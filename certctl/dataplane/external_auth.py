"""External authentication: ingress-nginx's auth-url, one subrequest per request.

The subrequest goes to the auth service over the data plane's upstream pool
(kept-alive connections, like nginx's `auth_request` to an upstream): the
client's request head without its body, plus the headers ingress-nginx adds
(`X-Original-URL`, `X-Original-Method`, `X-Original-URI`, `X-Auth-Request-
Redirect`, `X-Real-IP`, `X-Forwarded-For`, `-Proto`, `-Host`). Its status
decides (see `certctl.routes.options.ExternalAuth`); its body is never relayed.

With `cache_key` the outcome is kept per zone and expanded key for the
configured statuses and time, as `auth-cache-key`/`auth-cache-duration` do.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Sequence
from typing import Final

from certctl.dataplane import forwarding, upstream
from certctl.routes import options

logger = logging.getLogger(__name__)

Header = tuple[bytes, bytes]
# The client's fields not passed on: as to a backend, and those the subrequest sets.
_NOT_SENT: Final = forwarding.NOT_FORWARDED | {b"x-original-url", b"x-original-method",
                                              b"x-original-uri", b"x-auth-request-redirect",
                                              b"x-sent-from", b"x-scheme"}
_CACHE_SIZE: Final = 10_000


class Verdict:
    """`status` 0 lets the request through with `upstream_headers` set on it; otherwise
    the client gets `status` (401, 403, 302 to the sign-in page, 500). `client_headers`
    go on the client's answer either way (WWW-Authenticate, Location, Set-Cookie)."""

    __slots__ = ("client_headers", "status", "upstream_headers")

    def __init__(self, *, status: int, upstream_headers: tuple[Header, ...] = (),
                 client_headers: tuple[Header, ...] = ()) -> None:
        self.status = status
        self.upstream_headers = upstream_headers
        self.client_headers = client_headers


_FAILED: Final = Verdict(status=500)


class ExternalAuthorizer:
    def __init__(self, *, pool: upstream.Pool, connect_timeout: float, timeout: float) -> None:
        self._pool = pool
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._cache: dict[tuple[str, bytes], tuple[float, Verdict]] = {}

    async def check(
        self,
        *,
        rules: options.ExternalAuth,
        scheme: bytes,
        method: bytes,
        target: bytes,
        http_host: bytes,
        host: str,
        client_ip: bytes,
        headers: Sequence[Header],
    ) -> Verdict:
        """The auth service's verdict on one request (`target`: its path and query)."""
        values = _variables(scheme=scheme, method=method, target=target, http_host=http_host,
                            host=host, client_ip=client_ip, headers=headers)
        cache_key = None
        if rules.cache_key is not None:
            cache_key = (rules.zone, options.expand(rules.cache_key, values))
            cached = self._cache.get(cache_key)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
        status, answer = await self._ask(rules=rules, values=values, method=method,
                                         target=target, headers=headers)
        verdict = _verdict(rules=rules, values=values, status=status, answer=answer)
        if cache_key is not None and status in rules.cache_statuses:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[cache_key] = (time.monotonic() + rules.cache_seconds, verdict)
        return verdict

    async def _ask(
        self, *, rules: options.ExternalAuth, values: dict[str, bytes], method: bytes,
        target: bytes, headers: Sequence[Header],
    ) -> tuple[int, Sequence[Header]]:
        """(status, headers) of the auth service's answer; status 0 when there was none."""
        url = urllib.parse.urlsplit(options.expand(rules.url, values).decode("latin-1"))
        tls = url.scheme == "https"
        if url.hostname is None:
            return 0, ()
        address = (url.hostname, url.port or (443 if tls else 80))
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        redirect = (options.expand(rules.request_redirect, values)
                    if rules.request_redirect is not None else target)
        parts = [rules.method, b" ", path.encode("latin-1"), b" HTTP/1.1\r\nhost: ",
                 url.netloc.rpartition("@")[2].encode("latin-1"), b"\r\n"]
        for name, value in headers:
            if name.lower() not in _NOT_SENT:
                parts += (name, b": ", value, b"\r\n")
        parts += (b"x-original-url: ", values["$scheme"], b"://", values["$http_host"], target,
                  b"\r\nx-original-method: ", method, b"\r\nx-original-uri: ", target,
                  b"\r\nx-auth-request-redirect: ", redirect, b"\r\n")
        parts.append(forwarding.forwarded_lines(
            client_ip=values["$remote_addr"], proto=values["$scheme"], host=values["$http_host"]))
        parts += (b"x-scheme: ", values["$scheme"],
                  b"\r\nx-sent-from: certctl\r\ncontent-length: 0\r\n\r\n")
        request = b"".join(parts)
        for fresh in (False, True):  # a kept-alive connection may have been closed meanwhile
            connection = await self._pool.connect_any(
                [address], start=0, tls=tls, fresh=fresh, timeout=self._connect_timeout)
            if connection is None:
                return 0, ()
            answer = _Answer()
            connection.begin(exchange=answer, request=request, head_only=rules.method == b"HEAD")
            try:
                async with asyncio.timeout(self._timeout):
                    await answer.done
            except TimeoutError:
                connection.close()
                logger.warning("auth service %s:%s did not answer in %.0f s", *address,
                               self._timeout)
                return 0, ()
            if answer.head is not None and answer.complete:
                self._pool.release(connection)
                return answer.head.status, answer.head.headers
            connection.close()
            if not connection.reused or answer.head is not None:
                break
        logger.warning("auth service %s:%s failed the subrequest", *address)
        return 0, ()


def _verdict(*, rules: options.ExternalAuth, values: dict[str, bytes], status: int,
             answer: Sequence[Header]) -> Verdict:
    cookies = tuple((b"set-cookie", value) for name, value in answer
                    if name.lower() == b"set-cookie")
    if 200 <= status < 300:
        wanted = {name: None for name in rules.response_headers}
        copied = tuple((name.lower(), value) for name, value in answer
                       if name.lower() in wanted)
        return Verdict(status=0, upstream_headers=copied,
                       client_headers=cookies if rules.always_set_cookie else ())
    if status == 401:
        if rules.signin is not None:
            return Verdict(status=302, client_headers=(
                (b"location", _signin_location(rules, values)), *cookies))
        challenge = tuple((b"www-authenticate", value) for name, value in answer
                          if name.lower() == b"www-authenticate")
        return Verdict(status=401, client_headers=(*challenge, *cookies))
    if status == 403:
        return Verdict(status=403, client_headers=cookies)
    return _FAILED


def _signin_location(rules: options.ExternalAuth, values: dict[str, bytes]) -> bytes:
    """The sign-in URL with the original one in its redirect parameter (unless it has one)."""
    assert rules.signin is not None
    location = options.expand(rules.signin, values)
    param = rules.signin_redirect_param.encode()
    if param + b"=" in location:
        return location
    original = values["$scheme"] + b"://" + values["$http_host"] + values["$request_uri"]
    separator = b"&" if b"?" in location else b"?"
    return location + separator + param + b"=" + urllib.parse.quote(
        original, safe="").encode()


def _variables(*, scheme: bytes, method: bytes, target: bytes, http_host: bytes, host: str,
               client_ip: bytes, headers: Sequence[Header]) -> dict[str, bytes]:
    path, question, query = target.partition(b"?")
    values = {
        "$request_uri": target, "$escaped_request_uri": urllib.parse.quote(
            target, safe="").encode(),
        "$uri": path, "$is_args": question, "$args": query, "$scheme": scheme,
        "$http_host": http_host, "$host": host.encode(), "$remote_addr": client_ip,
        "$request_method": method,
    }
    for name, value in headers:
        key = "$http_" + name.decode("latin-1").lower().replace("-", "_")
        values.setdefault(key, value)
    return values


class _Answer:
    """An upstream.Exchange that keeps the response head and drops the body."""

    def __init__(self) -> None:
        self.head: upstream.ResponseHead | None = None
        self.complete = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def response_head(self, head: upstream.ResponseHead) -> None:
        self.head = head

    def response_body(self, chunk: bytes) -> None:
        pass  # nginx relays none of the auth service's body either

    def response_flush(self) -> None:
        pass

    def response_complete(self) -> None:
        self.complete = True
        if not self.done.done():
            self.done.set_result(None)

    def response_upgraded(self, leftover: bytes) -> None:
        self.upstream_failed(None)

    def tunnel_data(self, data: bytes) -> None:
        pass

    def upstream_failed(self, error: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def upstream_write_paused(self, paused: bool) -> None:
        pass
