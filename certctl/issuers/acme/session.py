"""The HTTP session an ACME client's requests go through: requests' Session, with its
per-request machinery skipped where it decides nothing.

The `acme` library sends through a `requests.Session` and reads `requests.Response`s.
Of an ACME request's client CPU (about 0.85 ms against a local Pebble), requests' own
layers took over a quarter: preparing the request (runtime Protocol checks on every mapping),
the adapter choosing its pool and checking the CA bundle path on disk, cookies, hooks,
the response's wrapping. Most of it decides the same thing for every request to one
server. `AcmeSession` decides it once per origin (scheme, host and port) and, where
requests would add nothing (no proxy, no netrc credentials, no cookies held), sends
straight through the adapter's urllib3 pool, as `HTTPAdapter.send` does, and wraps the
answer in a `requests.Response` with the request, timing and hooks the callers read.
Anything else goes through `Session.request` unchanged.
"""

from __future__ import annotations

import datetime
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, cast

import requests
import requests.adapters
import requests.cookies
import requests.hooks
import requests.structures
import requests.utils
import urllib3
import urllib3.exceptions

# A redirect answering a GET or HEAD is followed through `Session.request`, as requests
# would; one answering a POST is returned as it is (ACME redirects none).
_REDIRECTS = frozenset((301, 302, 303, 307, 308))


@dataclass(kw_only=True)
class _Origin:
    """What requests decides for every request to one origin, decided once."""

    adapter: requests.adapters.HTTPAdapter
    host: dict[str, Any]  # urllib3's pool key: scheme, host, port
    pool_kwargs: dict[str, Any]  # and its TLS settings (verify, CA bundle)
    verify: Any
    checked_pool: object = None  # the pool `cert_verify` last set up


class AcmeSession(requests.Session):
    """requests' Session, sending the `acme` library's requests to an origin without a
    proxy, netrc credentials, client certificate, cookies or query parameters of the
    session's straight through urllib3 (see the module docstring). A call with arguments
    the `acme` library does not pass goes through `Session.request` unchanged."""

    _DIRECT_ARGUMENTS = frozenset(("headers", "data", "timeout", "verify"))

    def __init__(self) -> None:
        super().__init__()
        self._origins: dict[tuple[str, str, object], _Origin | None] = {}
        self._timeouts: dict[object, urllib3.Timeout] = {}

    def request(  # type: ignore[override]
        self, method: str, url: str, *args: Any, **kwargs: Any
    ) -> requests.Response:
        target = urllib.parse.urlsplit(url)
        origin = None if (args or not kwargs.keys() <= self._DIRECT_ARGUMENTS or self.cookies
                          or self.params) else self._origin(url, target, kwargs.get("verify"))
        if origin is None:
            return super().request(method, url, *args, **kwargs)
        method = method.upper()
        response = self._send(origin, method, url, target, headers=kwargs.get("headers"),
                              data=kwargs.get("data"), timeout=kwargs.get("timeout"))
        location = response.headers.get("Location")
        if method in ("GET", "HEAD") and response.status_code in _REDIRECTS and location:
            return super().request(method, urllib.parse.urljoin(url, location), **kwargs)
        return response

    def _origin(self, url: str, target: urllib.parse.SplitResult,
                verify: Any) -> _Origin | None:
        """How requests to `url`'s origin (`target`, split) go; None: through
        `Session.request` (a proxy, netrc credentials or a client certificate apply, which
        requests' own path handles)."""
        key = (target.scheme, target.netloc, verify)
        if key in self._origins:
            return self._origins[key]
        settings = self.merge_environment_settings(url, {}, None, verify, None)
        auth = self.auth
        if self.trust_env and not auth:
            auth = requests.utils.get_netrc_auth(url)
        adapter = self.get_adapter(url)
        origin = None
        if (not auth and settings["cert"] is None
                and isinstance(adapter, requests.adapters.HTTPAdapter)
                and requests.utils.select_proxy(url, settings["proxies"]) is None):
            verify = settings["verify"]
            host, pool_kwargs = adapter.build_connection_pool_key_attributes(
                requests.Request("GET", url).prepare(), True if verify is None else verify)
            origin = _Origin(adapter=adapter, host=dict(host), pool_kwargs=dict(pool_kwargs),
                             verify=verify)
        self._origins[key] = origin
        return origin

    def _send(self, origin: _Origin, method: str, url: str, target: urllib.parse.SplitResult,
              *, headers: Any, data: Any, timeout: Any) -> requests.Response:
        sent = requests.structures.CaseInsensitiveDict(self.headers)
        sent.update(headers or {})
        for name in [name for name, value in sent.items() if value is None]:
            del sent[name]  # as requests drops them
        request = requests.PreparedRequest()  # what the response says was sent
        request.method, request.url = method, url
        request.headers = cast(requests.structures.CaseInsensitiveDict[str], sent)
        body = data.encode("utf-8") if isinstance(data, str) else (data or None)
        pool = origin.adapter.poolmanager.connection_from_host(
            **origin.host, pool_kwargs=origin.pool_kwargs)
        if pool is not origin.checked_pool:  # a new pool: its certificate checks, once
            origin.adapter.cert_verify(  # type: ignore[no-untyped-call]
                pool, url, origin.verify, None)
            origin.checked_pool = pool
        started = time.perf_counter()
        try:
            raw = pool.urlopen(
                method, (target.path or "/") + (f"?{target.query}" if target.query else ""),
                body=body, headers=dict(sent), redirect=False,
                assert_same_host=False, preload_content=True, decode_content=True,
                retries=origin.adapter.max_retries, timeout=self._timeout(timeout))
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise _requests_error(error, request) from error
        response = requests.Response()
        response.status_code = raw.status
        response.headers = requests.structures.CaseInsensitiveDict(raw.headers)
        response.encoding = requests.utils.get_encoding_from_headers(response.headers)
        response.raw = raw
        response.reason = raw.reason
        response.url = url
        response.request = request
        response.connection = origin.adapter
        response._content = raw.data  # read already (preload_content), its connection freed
        response._content_consumed = True  # type: ignore[attr-defined]
        response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
        if "Set-Cookie" in response.headers:  # kept as requests keeps them, for next time
            requests.cookies.extract_cookies_to_jar(  # type: ignore[no-untyped-call]
                self.cookies, request, raw)
        hooked: requests.Response = requests.hooks.dispatch_hook(  # type: ignore[no-untyped-call]
            "response", self.hooks, response)
        return hooked

    def _timeout(self, timeout: Any) -> urllib3.Timeout:
        found = self._timeouts.get(timeout)
        if found is None:
            connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
            found = self._timeouts[timeout] = urllib3.Timeout(connect=connect, read=read)
        return found


def _requests_error(error: Exception, request: requests.PreparedRequest) -> Exception:
    """The exception `HTTPAdapter.send` raises for urllib3's `error`, as far as the ACME
    client tells them apart: a TLS failure, or the server not reached."""
    cause = error.reason if isinstance(error, urllib3.exceptions.MaxRetryError) else error
    if isinstance(cause, urllib3.exceptions.SSLError):
        return requests.exceptions.SSLError(error, request=request)
    return requests.exceptions.ConnectionError(error, request=request)


class CABundleAdapter(requests.adapters.HTTPAdapter):
    """Trust exactly the given CA bundle, held in memory (no temp file to leak or clean up).

    requests only takes a bundle as a file path; instead the pool manager gets
    an SSLContext loaded from the PEM, and `cert_verify` is stopped from
    adding the default (certifi) bundle to it.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext) -> None:
        self._ssl_context = ssl_context
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        pool_kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # Mounted only when verifying, and certctl never sends client certs:
        # require verification against the context's roots, nothing else.
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None
