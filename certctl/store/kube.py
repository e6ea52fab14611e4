"""The store over the Kubernetes API: what the reconcilers use in `certctl controller`.

Every call is one REST request (urllib3's pool, thread-safe) to the paths
of the kinds certctl knows (`RESOURCES`), with
the connection settings of the official `kubernetes` client: kubeconfig or
in-cluster service account, CA, client certificates, and bearer tokens
refreshed through its configuration hooks. (Its generated `ApiClient`
changes signatures between releases and offers nothing for untyped kinds.)

Behaviour that comes from the real API server rather than from here, and
that the tests' emulator has to copy:

- `replace` is a PUT carrying `metadata.resourceVersion`: the server answers
  409 when it is stale, which becomes `Conflict`;
- for kinds with a status subresource, a PUT of the object ignores `status`
  and a PUT of `/status` changes only `status`;
- `metadata.uid`, `creationTimestamp`, `generation` are assigned by the
  server; owned objects are garbage-collected by the cluster.

List responses omit `kind`/`apiVersion` on items; they are filled in so
reconcilers see the same shape as from `get`.

Transient failures (a refused or dropped connection, 429, 500, 502, 503,
504) are retried a few times within about three seconds, honouring
Retry-After, as client-go does (urllib3's `Retry`, the pool's); what still
fails is a `StoreError`
and the work queue retries the whole reconcile with its own backoff. A
retried write may have been done the first time (the answer was lost), and
the retry then says so in the Store's own terms: a create finds
`AlreadyExists`, a replace finds `Conflict` (its resourceVersion is stale),
a delete finds nothing to delete; callers handle those already.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, cast

import kubernetes.client
import kubernetes.config
import requests.utils
import urllib3
import urllib3.util

from certctl.api import conditions, kinds
from certctl.api.resources import ObjectKey
from certctl.store import interface
from certctl.store.interface import EventType, Object

logger = logging.getLogger(__name__)


# The kinds this store reaches, with their REST resources: api/kinds.py is their one table.
RESOURCES: Mapping[str, kinds.KindInfo] = kinds.WITH_API_ONLY


def resource_path(resource: kinds.KindInfo, *, namespace: str | None, name: str | None = None,
                  subresource: str | None = None) -> str:
    """The REST path of a kind's collection (no `name`), or of one object or its
    subresource; a namespaced kind without `namespace` means all namespaces."""
    if resource.group:
        base = f"/apis/{resource.group}/{resource.version}"
    else:
        base = f"/api/{resource.version}"
    if resource.namespaced and namespace is not None:
        base += f"/namespaces/{namespace}"
    base += f"/{resource.plural}"
    if name is not None:
        base += f"/{name}"
    if subresource is not None:
        base += f"/{subresource}"
    return base


# Events about cluster-scoped objects go here, as kubectl and client-go do.
CLUSTER_EVENTS_NAMESPACE = "default"

# Answers worth asking again: throttled, or the API server (or what is in front
# of it) failing for a moment. Not 409 or 422: asking again changes nothing.
# Every method is retried: a write whose answer was lost shows as AlreadyExists
# or Conflict the second time. Waits 0, 0.2, 0.4, 0.8, 1.6 s (or Retry-After);
# then the work queue's backoff takes over.
TRANSIENT_RETRY = urllib3.util.Retry(
    total=5,
    backoff_factor=0.1,
    status_forcelist=frozenset({429, 500, 502, 503, 504}),
    allowed_methods=None,
    raise_on_status=False,
    respect_retry_after_header=True,
)


def load_configuration(
    *, kubeconfig: str | None = None, context: str | None = None
) -> kubernetes.client.Configuration:
    """The API connection: the given kubeconfig, else in-cluster, else ~/.kube/config."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig is None:
        try:
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
            return configuration
        except kubernetes.config.ConfigException:
            pass
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, context=context, client_configuration=configuration)
    return configuration


def auth_headers(configuration: kubernetes.client.Configuration) -> dict[str, str]:
    """The Authorization header to send now; the configuration's hook refreshes expiring
    tokens (projected service-account tokens, exec plugins) when asked."""
    headers: dict[str, str] = {}
    settings = cast(Mapping[str, Mapping[str, Any]], configuration.auth_settings())
    for auth in settings.values():
        if auth["in"] == "header" and auth["value"]:
            headers[auth["key"]] = str(auth["value"])
    return headers


KEPT_CONNECTIONS: Final = 64
# How long one Authorization header is sent again before the configuration is asked anew.
# Asking calls the configuration's refresh hook, which with a kubeconfig applies its whole
# context again each time: 8 % of the controller's CPU (py-spy, bench B8). The tokens that
# do change (exec plugins' and projected service-account tokens) live for minutes or more.
AUTH_REUSE_SECONDS: Final = 10.0


class KubeStore:
    def __init__(self, *, configuration: kubernetes.client.Configuration,
                 component: str = "certctl", namespaces: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`namespaces`: where lists of namespaced kinds look when given no namespace
        (`certctl controller --namespace`), so that the service account needs rights
        there only; empty: the whole cluster. `clock` (seconds) times the reuse of the
        Authorization header."""
        self.configuration = configuration
        self._clock = clock
        self._auth: tuple[float, dict[str, str]] | None = None  # (when asked, headers)
        self.namespaces: tuple[str, ...] = tuple(dict.fromkeys(namespaces))
        self._server = configuration.host.rstrip("/")
        # urllib3 itself, not a requests session over it: requests' per-request work
        # (preparing, merging settings, proxies, cookies, checking the CA path on disk)
        # was a third of the controller's CPU in its API calls (bench B8's profile).
        # The environment's proxies are read once, as the session read them.
        pool: dict[str, Any] = {
            "maxsize": KEPT_CONNECTIONS, "retries": TRANSIENT_RETRY,
            "cert_reqs": "CERT_REQUIRED" if configuration.verify_ssl else "CERT_NONE",
            "ca_certs": configuration.ssl_ca_cert or None,
            "cert_file": configuration.cert_file or None,
            "key_file": configuration.key_file or None,
        }
        if not configuration.verify_ssl:
            pool["assert_hostname"] = False
        proxy = requests.utils.select_proxy(
            self._server, requests.utils.get_environ_proxies(self._server))
        self._pool: urllib3.PoolManager = (
            urllib3.ProxyManager(proxy, **pool) if proxy else urllib3.PoolManager(**pool))
        self._component = component
        self._streams: set[urllib3.BaseHTTPResponse] = set()  # watch streams open now
        self._closed = False

    def close(self) -> None:
        """Also ends the watch streams open now (their threads see the stream end)."""
        self._closed = True
        for answer in list(self._streams):
            # Wakes a thread blocked reading it, as close() would not; raises once the
            # stream ended meanwhile.
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                answer.shutdown()
        self._pool.clear()

    # --- the Store protocol --------------------------------------------------

    def get(self, *, kind: str, namespace: str | None, name: str) -> Object | None:
        resource = _resource(kind)
        try:
            return self._call("GET", resource_path(resource, namespace=namespace, name=name),
                              kind=kind)
        except interface.NotFound:
            return None

    def list(
        self,
        *,
        kind: str,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        shared: bool = False,  # every list is a fresh answer of the API: nothing to share
    ) -> list[Object]:
        resource = _resource(kind)
        query: list[tuple[str, str]] = []
        if labels:
            query.append(("labelSelector", _selector(labels)))
        if namespace is None and resource.namespaced and self.namespaces:
            where: tuple[str | None, ...] = self.namespaces
        else:
            where = (namespace,)
        items: list[Object] = []
        for each in where:
            found = self._call("GET", resource_path(resource, namespace=each), kind=kind,
                               query=query)
            items.extend(found.get("items") or [])
        for item in items:
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", resource.api_version)
        # Filtered here too: a label selector the server ignored must not widen a list.
        return [item for item in items if labels_match(item, labels)]

    def check_served(self, *, kind: str, namespace: str | None) -> None:
        """Raise NotFound when the API server does not serve the kind (its CRD missing),
        StoreError when it cannot be reached or refuses; reads at most one object
        (`limit=1`), not a whole listing of what may be 10,000 of them."""
        self._call("GET", resource_path(_resource(kind), namespace=namespace), kind=kind,
                   query=[("limit", "1")])

    def list_with_versions(
        self, *, kind: str, fields: Mapping[str, str] | None = None
    ) -> builtins.list[tuple[str | None, int | None, builtins.list[Object]]]:
        """Every object of a kind (with `fields`, those whose fields have these values: a
        field selector), per namespace listed (None: the whole cluster) with the listing's
        resourceVersion (None if it is no integer): for `watch_cache.WatchCache`."""
        resource = _resource(kind)
        where = self.namespaces if resource.namespaced and self.namespaces else (None,)
        query = [("fieldSelector", _selector(fields))] if fields else None
        listings: builtins.list[tuple[str | None, int | None, builtins.list[Object]]] = []
        for each in where:
            found = self._call("GET", resource_path(resource, namespace=each), kind=kind,
                               query=query)
            items: builtins.list[Object] = found.get("items") or []
            for item in items:
                item.setdefault("kind", kind)
                item.setdefault("apiVersion", resource.api_version)
            version = str((found.get("metadata") or {}).get("resourceVersion"))
            listings.append((each, int(version) if version.isdigit() else None, items))
        return listings

    def watch(self, *, kind: str, namespace: str | None, since: int | None,
              seconds: int, fields: Mapping[str, str] | None = None
              ) -> Iterator[tuple[str, Object]]:
        """The changes to a kind (in `namespace`, or everywhere; with `fields`, to the
        objects whose fields have these values) after version `since`, as
        (type, object) while the stream lasts: ADDED, MODIFIED, DELETED, and BOOKMARK (an
        object carrying only the version reached); without `since`, every object there is
        first, as ADDED. The server ends it after `seconds`;
        `watch.Watch` of the `kubernetes` client does the same for its generated API only.
        Raises WatchExpired when `since` is too old (410 Gone: list again), StoreError
        when the stream fails."""
        resource = _resource(kind)
        path = resource_path(resource, namespace=namespace)
        headers = {"Accept": "application/json", "User-Agent": self._component,
                   **self._auth_headers()}
        query = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(seconds)}
        if since is not None:
            query["resourceVersion"] = str(since)
        if fields:
            query["fieldSelector"] = _selector(fields)
        try:
            # The read timeout outlasts the server's own end of the stream, with bookmarks
            # (about one a minute) in between: a silent connection is a dead one.
            answer = self._pool.request(
                "GET", self._server + path + "?" + urllib.parse.urlencode(query),
                headers=headers, preload_content=False,
                timeout=urllib3.Timeout(connect=10, read=seconds + 60))
        except urllib3.exceptions.HTTPError as err:
            if self._closed:
                return
            raise interface.StoreError(f"watch {path}: {err}") from err
        self._streams.add(answer)
        try:
            if answer.status == 410:
                raise WatchExpired(f"watch {path}: 410 Gone")
            if answer.status >= 400:
                raise _store_error(answer.status, answer.reason, answer.read(),
                                   method="WATCH", path=path)
            for line in _lines(answer):
                event = json.loads(line)
                event_type, obj = event.get("type"), event.get("object") or {}
                if event_type == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchExpired(f"watch {path}: {obj.get('message')}")
                    raise interface.StoreError(f"watch {path}: {obj.get('message')}")
                obj.setdefault("kind", kind)
                obj.setdefault("apiVersion", resource.api_version)
                yield event_type, obj
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as err:
            if self._closed:
                return
            raise interface.StoreError(f"watch {path}: {err}") from err
        finally:
            self._streams.discard(answer)
            answer.close()  # its connection too: a stream left half read is not reused
            answer.release_conn()

    def create(self, *, obj: Object) -> Object:
        key = _identity(obj)
        try:
            with _naming(key):
                return self._call("POST", resource_path(_resource(key.kind),
                                                        namespace=key.namespace),
                                  kind=key.kind, body=obj)
        except interface.Conflict as err:
            raise interface.AlreadyExists(str(err)) from err

    def replace(self, *, obj: Object) -> Object:
        key = _identity(obj)
        with _naming(key):
            return self._call("PUT", resource_path(_resource(key.kind),
                                                   namespace=key.namespace, name=key.name),
                              kind=key.kind, body=obj)

    def replace_status(self, *, obj: Object) -> Object:
        key = _identity(obj)
        with _naming(key):
            return self._call("PUT", resource_path(
                _resource(key.kind), namespace=key.namespace, name=key.name,
                subresource="status"),
                kind=key.kind, body=obj)

    def delete(self, *, kind: str, namespace: str | None, name: str) -> None:
        try:
            with _naming(ObjectKey(kind=kind, namespace=namespace, name=name)):
                self._call("DELETE", resource_path(_resource(kind), namespace=namespace, name=name),
                           kind=kind, body={"propagationPolicy": "Background"})
        except interface.NotFound:
            return

    def emit_event(
        self, *, obj: Mapping[str, Any], type: EventType, reason: str, message: str
    ) -> None:
        """A core/v1 Event, as `kubectl describe` shows them; best effort, never raises."""
        log = logger.warning if type == "Warning" else logger.info
        try:
            key = _identity(obj)
        except (KeyError, TypeError, ValueError, interface.StoreError):
            return
        kind, namespace, name = key.kind, key.namespace, key.name
        log("%s %s/%s %s: %s", kind, namespace or "", name, reason, message)
        stamp = conditions.format_time(datetime.datetime.now(datetime.UTC))
        event_namespace = namespace or CLUSTER_EVENTS_NAMESPACE
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": event_namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": kind,
                "name": name,
                "namespace": namespace,
                "uid": obj.get("metadata", {}).get("uid"),
                "resourceVersion": obj.get("metadata", {}).get("resourceVersion"),
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self._component},
            "reportingComponent": self._component,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._call("POST", resource_path(RESOURCES["Event"], namespace=event_namespace),
                       kind="Event", body=event)
        except interface.StoreError as err:
            logger.debug("could not record an event about %s %s: %s", kind, name, err)

    # --- transport -----------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        """The Authorization header, asked of the configuration at most every
        AUTH_REUSE_SECONDS (its hook refreshes expiring tokens when asked)."""
        now = self._clock()
        found = self._auth
        if found is None or now - found[0] >= AUTH_REUSE_SECONDS:
            found = self._auth = (now, auth_headers(self.configuration))
        return found[1]

    def _call(
        self,
        method: str,
        path: str,
        *,
        kind: str,
        body: Mapping[str, Any] | None = None,
        query: builtins.list[tuple[str, str]] | None = None,
    ) -> Object:
        headers = {"Accept": "application/json", "User-Agent": self._component,
                   **self._auth_headers()}
        url = self._server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            answer = self._pool.request(method, url, body=data, headers=headers, timeout=30.0)
        except urllib3.exceptions.HTTPError as err:
            raise interface.StoreError(f"{method} {path}: {err}") from err
        if answer.status >= 400:
            raise _store_error(answer.status, answer.reason, answer.data, method=method,
                               path=path)
        try:
            response = json.loads(answer.data)
        except ValueError as err:
            raise interface.StoreError(f"{method} {path}: the API answered no JSON") from err
        if not isinstance(response, dict):
            raise interface.StoreError(f"{method} {path}: the API answered {type(response)}")
        if method != "DELETE":
            response.setdefault("kind", kind)
            response.setdefault("apiVersion", RESOURCES[kind].api_version)
        return response


class WatchExpired(interface.StoreError):
    """The version a watch started from is older than the API server keeps: list again."""


def _resource(kind: str) -> kinds.KindInfo:
    try:
        return RESOURCES[kind]
    except KeyError:
        raise interface.StoreError(f"certctl does not know the API of kind {kind}") from None


def _identity(obj: Mapping[str, Any]) -> ObjectKey:
    """The object's key; refused here when its namespace does not fit its kind's scope,
    as the local store refuses it (the API server would answer a puzzling 404 or 405 for
    the path without a namespace, or put a namespaced path to a cluster-scoped kind)."""
    kind = obj["kind"]
    metadata = obj["metadata"]
    key = ObjectKey(kind=kind, namespace=metadata.get("namespace"), name=metadata["name"])
    if _resource(kind).namespaced != (key.namespace is not None):
        raise interface.StoreError(f"{key}: namespace does not match the kind's scope")
    return key


def _selector(values: Mapping[str, str]) -> str:
    """A label or field selector asking for exactly these values."""
    return ",".join(f"{key}={value}" for key, value in values.items())


def labels_match(obj: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    if not labels:
        return True
    present = obj.get("metadata", {}).get("labels") or {}
    return all(present.get(key) == value for key, value in labels.items())


@contextlib.contextmanager
def _naming(key: ObjectKey) -> Iterator[None]:
    """A write's errors name its object first, as the local store's do (`Secret web/a
    already exists`), so that logs and conditions read the same in both."""
    try:
        yield
    except interface.StoreError as err:
        raise type(err)(f"{key}: {err}") from err


def _store_error(status: int, reason: str | None, data: bytes, *, method: str,
                 path: str) -> interface.StoreError:
    try:
        detail = str(json.loads(data).get("message") or "")
    except (ValueError, AttributeError):
        detail = data[:300].decode(errors="replace")
    message = f"{method} {path}: {status} {reason}: {detail}"
    if status == 404:
        return interface.NotFound(message)
    if status == 409:
        return interface.Conflict(message)
    if status == 403:
        return interface.Forbidden(message)
    return interface.StoreError(message)


def _lines(answer: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """A watch stream's events, one JSON document a line, each as soon as its chunk came."""
    pending = b""
    while chunk := answer.read1(65536):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending
