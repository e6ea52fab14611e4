"""On-demand TLS: a certificate obtained during the first handshake for a name none covers.

Caddy's on_demand_tls, for `certctl serve`: a ClientHello for a name no
loaded certificate covers is held (`tls.TlsListener`) while this module
decides whether the name may have one and, if so, creates a Certificate
for it; the handshake resumes as soon as the data plane serves that
certificate, or after `Policy.wait` with the default certificate.

- Open on-demand issuance lets anyone who points a DNS name at us spend our
  CA rate limits, so a name must be permitted: by an allow-list of patterns
  (`*` is one whole label), or by the `ask` endpoint answering 2xx to
  `GET <url>?domain=<name>` (anything else, a redirect included, or no answer
  within `ASK_TIMEOUT`, refuses), as Caddy's `ask`. A refusal is remembered
  for `refusal_ttl`, so a burst of handshakes for one name asks once.
- Concurrent handshakes for one name share one decision and one Certificate
  (whose controller places one order at a time); after a wait that ended
  without a certificate the name backs off for `failure_backoff` (its
  handshakes get the default at once while the Certificate keeps being
  retried by its controller on its own schedule).
- At most `names_per_minute` Certificates are created per minute, all names
  together: what a flood of permitted names can cost the CA account.
- The result is a plain Certificate (`on-demand-<name>`, in `Policy.namespace`,
  labelled LABEL): renewed, reported and kept like any other; its Secret is
  served by the data-plane feed (`secrets`), also after a restart.

Decisions run on the data plane's event loop; store calls and the ask
request run in the loop's executor, so no handshake of another name waits
for them.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import http.client
import ipaddress
import logging
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from certctl.api.resources import ObjectKey
from certctl.store.interface import AlreadyExists, Object, Store

logger = logging.getLogger(__name__)

LABEL = "certctl.io/on-demand"
HOST_ANNOTATION = "certctl.io/on-demand-host"
ASK_TIMEOUT = 5.0  # seconds an ask request may take (bounded by the wait too)
POLL_INTERVAL = 0.05  # seconds between looks at whether the new certificate is served
MAX_OBJECT_NAME = 63  # kept a valid label value and Service-like name everywhere
ISSUER_KINDS = ("ClusterIssuer", "Issuer")
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Who may get a certificate on demand, from which issuer, and how fast."""

    issuer_kind: str  # ClusterIssuer, or Issuer (in `namespace`)
    issuer_name: str
    namespace: str  # where the Certificates (and their Secrets) are created
    ask_url: str | None = None
    allow: tuple[str, ...] = ()  # DNS name patterns; `*` stands for one whole label
    wait: float = 10.0  # seconds a first handshake waits for its certificate
    names_per_minute: int = 10  # new Certificates per minute, all names together
    failure_backoff: float = 60.0  # seconds a name's handshakes stop waiting after a failure
    refusal_ttl: float = 10.0  # seconds a refusal (ask, allow-list, rate) is remembered

    def __post_init__(self) -> None:
        """ValueError naming the flag when the policy cannot be used."""
        if self.issuer_kind not in ISSUER_KINDS:
            raise ValueError(f"--on-demand-tls-issuer: kind {self.issuer_kind!r} must be "
                             "ClusterIssuer or Issuer")
        if not self.issuer_name:
            raise ValueError("--on-demand-tls-issuer: the issuer's name is empty")
        if self.ask_url is None and not self.allow:
            raise ValueError("--on-demand-tls-issuer needs --on-demand-tls-ask or "
                             "--on-demand-tls-allow: on-demand TLS open to every name would "
                             "let anyone spend the CA account's rate limits")
        if self.ask_url is not None:
            url = urllib.parse.urlsplit(self.ask_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"--on-demand-tls-ask: {self.ask_url!r} is not an http(s) URL")
        for pattern in self.allow:
            if not valid_pattern(pattern):
                raise ValueError(f"--on-demand-tls-allow: {pattern!r} is not a DNS name "
                                 "pattern (labels of a-z, 0-9 and -, or * for a whole label)")
        if self.wait <= 0:
            raise ValueError(f"--on-demand-tls-wait: {self.wait} must be positive")
        if self.names_per_minute < 1:
            raise ValueError(f"--on-demand-tls-rate: {self.names_per_minute} must be at "
                             "least 1")


def parse_issuer(text: str) -> tuple[str, str]:
    """`ClusterIssuer/NAME` or `Issuer/NAME` -> (kind, name); ValueError naming the flag."""
    kind, slash, name = text.partition("/")
    if not slash or kind not in ISSUER_KINDS or not name:
        raise ValueError(f"--on-demand-tls-issuer: {text!r} is not ClusterIssuer/NAME or "
                         "Issuer/NAME")
    return kind, name


# --- pure checks ------------------------------------------------------------------


def dns_name(server_name: str) -> str | None:
    """The server name as a certifiable DNS name (lower case, no final dot), None when it is
    not one: an IP address, a single label, a wildcard, a bad label."""
    name = server_name.lower().removesuffix(".")
    if len(name) > 253 or "." not in name:
        return None
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return None
    if not all(_LABEL_RE.fullmatch(label) for label in name.split(".")):
        return None
    return name


def valid_pattern(pattern: str) -> bool:
    labels = pattern.lower().split(".")
    return len(labels) >= 2 and all(
        label == "*" or _LABEL_RE.fullmatch(label) for label in labels)


def allowed_by_patterns(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether `name` (from `dns_name`) matches a pattern, `*` matching one whole label."""
    labels = name.split(".")
    for pattern in patterns:
        wanted = pattern.lower().split(".")
        if len(wanted) == len(labels) and all(
                w in ("*", label) for w, label in zip(wanted, labels, strict=True)):
            return True
    return False


def certificate_name(name: str) -> str:
    """The Certificate's (and its Secret's) name for a host: `on-demand-<dashed host>`, cut
    and suffixed with a hash of the whole host when longer than a label value may be."""
    readable = "on-demand-" + name.replace(".", "-")
    if len(readable) <= MAX_OBJECT_NAME:
        return readable
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return readable[:MAX_OBJECT_NAME - 11].rstrip("-") + "-" + digest


def certificate_for(*, name: str, policy: Policy) -> Object:
    object_name = certificate_name(name)
    return {
        "apiVersion": "certctl.io/v1",
        "kind": "Certificate",
        "metadata": {
            "name": object_name,
            "namespace": policy.namespace,
            "labels": {LABEL: "true"},
            "annotations": {HOST_ANNOTATION: name},
        },
        "spec": {
            "secretName": object_name,
            "dnsNames": [name],
            "issuerRef": {"name": policy.issuer_name, "kind": policy.issuer_kind,
                          "group": "cert-manager.io"},
            "usages": ["digital signature", "key encipherment"],
        },
    }


class RateLimit:
    """At most `limit` events per sliding `interval` (seconds of `clock`)."""

    def __init__(self, *, limit: int, interval: float) -> None:
        self._limit = limit
        self._interval = interval
        self._taken: collections.deque[float] = collections.deque()

    def take(self, now: float) -> bool:
        """Count one event at `now` if the limit allows it; False (not counted) if not."""
        taken = self._taken
        while taken and taken[0] <= now - self._interval:
            taken.popleft()
        if len(taken) >= self._limit:
            return False
        taken.append(now)
        return True


def ask_endpoint(*, url: str, domain: str, timeout: float) -> bool:
    """GET `url` with `?domain=`: True for a 2xx answer; False for any other answer or none
    (redirects are not followed: a 3xx refuses, as with Caddy)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.urlencode({"domain": domain})
    target = (parts.path or "/") + "?" + (f"{parts.query}&{query}" if parts.query else query)
    connection_type = (http.client.HTTPSConnection if parts.scheme == "https"
                       else http.client.HTTPConnection)
    connection = connection_type(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request("GET", target, headers={"User-Agent": "certctl on-demand-tls"})
        response = connection.getresponse()
        response.read(65536)
        return 200 <= response.status < 300
    except (OSError, http.client.HTTPException) as err:
        logger.warning("on-demand TLS ask endpoint %s did not answer for %s: %s", url, domain,
                       err)
        return False
    finally:
        connection.close()


# --- the decisions, on the event loop ------------------------------------------------


@dataclass(kw_only=True, eq=False)
class _Waiter:
    resume: Callable[[], None]
    timer: asyncio.TimerHandle | None = None
    resumed: bool = False

    def release(self) -> None:
        if not self.resumed:
            self.resumed = True
            if self.timer is not None:
                self.timer.cancel()
            self.resume()


@dataclass(kw_only=True, eq=False)
class _Pending:
    deadline: float
    waiters: list[_Waiter] = field(default_factory=list)


class OnDemandTls:
    """Decides, per handshake for an uncovered name, whether to hold it for a new certificate."""

    def __init__(
        self,
        *,
        policy: Policy,
        store: Store,
        covers: Callable[[str], bool],
        clock: Callable[[], float] = time.monotonic,
        ask: Callable[..., bool] = ask_endpoint,
    ) -> None:
        """`covers(name)`: whether the data plane serves a certificate for the name now."""
        self.policy = policy
        self._store = store
        self._covers = covers
        self._clock = clock
        self._ask = ask
        self._rate = RateLimit(limit=policy.names_per_minute, interval=60.0)
        self._pending: dict[str, _Pending] = {}
        self._quiet_until: dict[str, float] = {}  # refused or failed: no wait until then
        self._secrets: frozenset[ObjectKey] = frozenset()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve on `loop` (the data plane's); the Secrets of the on-demand Certificates made
        before are served again."""
        self._loop = loop
        found = self._store.list(kind="Certificate", namespace=self.policy.namespace,
                                 labels={LABEL: "true"})
        self._secrets = frozenset(
            ObjectKey(kind="Secret", namespace=self.policy.namespace,
                      name=str((obj.get("spec") or {}).get("secretName")))
            for obj in found if (obj.get("spec") or {}).get("secretName"))

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for pending in self._pending.values():
            for waiter in pending.waiters:
                waiter.release()
        self._pending.clear()

    def secrets(self) -> frozenset[ObjectKey]:
        """The Secrets of on-demand Certificates, for the data plane to serve (any thread)."""
        return self._secrets

    def hold(self, server_name: str, resume: Callable[[], None]) -> bool:
        """For a handshake whose name no certificate covers: True when it is to wait, and
        `resume()` will be called (on the loop, once) when it may go on; False to go on now
        with the default certificate."""
        loop = self._loop
        if loop is None:
            return False
        name = dns_name(server_name)
        if name is None:
            return False
        pending = self._pending.get(name)
        if pending is None:
            now = self._clock()
            if self._quiet_until.get(name, 0.0) > now or self._covers(name):
                return False  # covered: its certificate failed to load, nothing to obtain
            if self.policy.ask_url is None and not allowed_by_patterns(name, self.policy.allow):
                self._quiet(name, self.policy.refusal_ttl)
                logger.info("on-demand TLS: %s is not in the allow-list", name)
                return False
            pending = _Pending(deadline=now + self.policy.wait)
            self._pending[name] = pending
            task = loop.create_task(self._obtain(name, pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        waiter = _Waiter(resume=resume)
        waiter.timer = loop.call_at(loop.time() + max(pending.deadline - self._clock(), 0.0),
                                    waiter.release)
        pending.waiters.append(waiter)
        return True

    def _requested(self, name: str) -> bool:
        """Whether some Certificate, in any namespace, asks for `name` or a wildcard that
        covers it (read from the raw spec: an unparsable one asks for nothing)."""
        wildcard = "*." + name.partition(".")[2]
        for certificate in self._store.list(kind="Certificate"):
            names = (certificate.get("spec") or {}).get("dnsNames") or []
            if isinstance(names, list) and (name in names or wildcard in names):
                return True
        return False

    def _quiet(self, name: str, seconds: float) -> None:
        now = self._clock()
        if len(self._quiet_until) > 10_000:  # random names must not grow it without end
            self._quiet_until = {n: t for n, t in self._quiet_until.items() if t > now}
        self._quiet_until[name] = now + seconds

    async def _obtain(self, name: str, pending: _Pending) -> None:
        try:
            if not await self._permitted(name, pending):
                self._quiet(name, self.policy.refusal_ttl)
                return
            if not await self._ensure_certificate(name):
                self._quiet(name, self.policy.refusal_ttl)
                return
            while not self._covers(name):
                if self._clock() >= pending.deadline:
                    logger.warning("on-demand TLS: no certificate for %s within %.1f s; its "
                                   "handshakes get the default for %.0f s", name,
                                   self.policy.wait, self.policy.failure_backoff)
                    self._quiet(name, self.policy.failure_backoff)
                    return
                await asyncio.sleep(POLL_INTERVAL)
        except Exception:
            logger.exception("on-demand TLS for %s failed", name)
            self._quiet(name, self.policy.failure_backoff)
        finally:
            self._pending.pop(name, None)  # already gone after stop()
            for waiter in pending.waiters:
                waiter.release()

    async def _permitted(self, name: str, pending: _Pending) -> bool:
        policy = self.policy
        if allowed_by_patterns(name, policy.allow):
            return True
        assert policy.ask_url is not None  # else refused in `hold`
        timeout = max(min(ASK_TIMEOUT, pending.deadline - self._clock()), 0.1)
        loop = asyncio.get_running_loop()
        allowed = await loop.run_in_executor(None, functools.partial(
            self._ask, url=policy.ask_url, domain=name, timeout=timeout))
        if not allowed:
            logger.info("on-demand TLS: the ask endpoint refused %s", name)
        return bool(allowed)

    async def _ensure_certificate(self, name: str) -> bool:
        """Create the name's Certificate unless it exists; False when the global rate limit
        refuses a new one."""
        policy = self.policy
        loop = asyncio.get_running_loop()
        object_name = certificate_name(name)
        existing = await loop.run_in_executor(None, functools.partial(
            self._store.get, kind="Certificate", namespace=policy.namespace, name=object_name))
        if existing is not None:
            return True
        # A Certificate of its own (an Ingress's, still being issued) already asks for the
        # name: a second one would place a second order for it.
        if await loop.run_in_executor(None, functools.partial(self._requested, name)):
            logger.info("on-demand TLS: %s is requested by another Certificate; waiting for "
                        "it", name)
            return True
        if not self._rate.take(self._clock()):
            logger.warning("on-demand TLS: %s refused, %d new names per minute already",
                           name, policy.names_per_minute)
            return False
        # Served as soon as its Secret appears (its event wakes the data-plane feed).
        self._secrets = self._secrets | {
            ObjectKey(kind="Secret", namespace=policy.namespace, name=object_name)}
        try:
            await loop.run_in_executor(None, functools.partial(
                self._store.create, obj=certificate_for(name=name, policy=policy)))
        except AlreadyExists:
            return True  # another replica, or a restart racing us: one Certificate all the same
        logger.info("on-demand TLS: created Certificate %s/%s for %s", policy.namespace,
                    object_name, name)
        return True
