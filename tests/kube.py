"""A Kubernetes API for tests: kmock's KubernetesEmulator, made to keep the API's promises.

kmock's emulator stores objects and streams watch events, but merges every
write naively and assigns no server-side metadata. The code under test must
not depend on that, so this subclass adds what a kube-apiserver guarantees
and certctl relies on (see certctl/store/kube.py):

- `metadata.uid`, `creationTimestamp`, `resourceVersion` on create, a new
  `resourceVersion` on every write, `generation` bumped on spec changes;
- PUT replaces the object (PATCH still merges), and is refused with 409 when
  the body's `resourceVersion` is stale;
- a PUT of the object keeps the stored `status`, a PUT of `/status` changes
  only `status`;
- deleting an owner deletes its dependents (the garbage collector's job);
- a list carries the resourceVersion it was taken at, and a watch from a
  resourceVersion replays every event after it (kmock's own watch sends the
  current objects again, which would hide a client that loses events across
  a reconnect); after `compact()`, resuming from older versions is answered
  with 410 Gone, and the client must list again.

It can also misbehave as a real API server does under load or upgrades
(`Faults`, switched by the tests): answer a share of requests with 500
before acting, answer writes with 409, act but lose the answer (a 500
after the write, as an etcd timeout), refuse watches, drop the watch
connections that are open (`Cluster.drop_watches`) or end them with an
ERROR event (`Cluster.break_watches`). Requests from the test's own client
(User-Agent `certctl-test`) are always served.

The emulator runs on its own event loop in a background thread, so tests and
the operator can talk to it through ordinary blocking clients.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import random
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import kmock
import kubernetes.client
from kmock._internal import aiobus, k8s_dicts, rendering  # the emulator's own types
from kmock._internal.k8s import KubernetesObjectConflictError, KubernetesObjectNotFoundError

from certctl.api import kinds
from certctl.runtime import dataplane_feed, leader, operator
from certctl.solvers import http01_ingress
from certctl.store.interface import Conflict
from certctl.store.kube import RESOURCES, KubeStore
from tests.pebble import PebbleServer, free_port

# Our CRDs as the emulator should list them (discovery), from the kinds table.
CERTCTL_RESOURCES = {info.plural: info for info in kinds.BY_KIND.values()
                     if info.group == "certctl.io"}


class _ResourceVersions:
    """One counter for every write, as etcd's revision: watches resume after one."""

    def __init__(self) -> None:
        self.current = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            self.current += 1
            return str(self.current)


_versions = _ResourceVersions()


def edit(
    api: KubeStore, *, kind: str, namespace: str, name: str,
    change: Callable[[dict[str, Any]], None],
) -> None:
    """Get, change and replace an object, again on a 409, as a user's `kubectl edit` would:
    the controllers write to the same objects (an Ingress's status, for one)."""
    for _ in range(10):
        obj = api.get(kind=kind, namespace=namespace, name=name)
        assert obj is not None, f"{kind} {namespace}/{name} not found"
        change(obj)
        try:
            api.replace(obj=obj)
        except Conflict:
            continue
        return
    raise AssertionError(f"{kind} {namespace}/{name}: 10 conflicts in a row")


def _version_of(event: dict[str, Any]) -> int | None:
    version = ((event.get("object") or {}).get("metadata") or {}).get("resourceVersion")
    return int(version) if isinstance(version, str) and version.isdigit() else None


class _VersionedBus(aiobus.Bus[Any]):
    """The watch events of one resource, kept in order of their resourceVersion so a
    watch can resume from one (a deletion gets a version of its own, as on a real API
    server)."""

    log: list[tuple[int, dict[str, Any]]]

    async def put(self, *items: Any) -> None:
        stamped = []
        for item in items:
            if isinstance(item, dict) and item.get("type") == "DELETED":
                obj = item["object"]
                item = {"type": "DELETED", "object": dict(obj, metadata=dict(
                    obj.get("metadata") or {}, resourceVersion=_versions.next()))}
            version = _version_of(item) if isinstance(item, dict) else None
            if version is not None:
                self.log.append((version, item))
            stamped.append(item)
        await super().put(*stamped)


def _versioned_bus() -> _VersionedBus:
    bus = _VersionedBus()
    bus.log = []
    return bus


TEST_CLIENT = "certctl-test"  # the User-Agent of Cluster.store(): never faulted


@dataclass(kw_only=True)
class Faults:
    """What the emulator does wrong, for requests of the code under test.

    Shares are probabilities per request; `injected` counts what was done, so a
    test can tell that the faults really happened."""

    errors: float = 0.0  # any request: 500 before anything happens
    conflicts: float = 0.0  # PUT/PATCH/DELETE of one object: 409 before anything happens
    lost_answers: float = 0.0  # POST/PUT/DELETE: done, then answered 500 (an etcd timeout)
    # The first this many requests a conflict or a lost answer may befall get it, whatever
    # the share: a test that needs some of each does not depend on how many writes the code
    # under test happens to make before it is done.
    first_conflicts: int = 0
    first_lost_answers: int = 0
    refuse_watches: bool = False  # watch and list requests: 500
    seed: int = 7
    injected: collections.Counter[str] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def roll(self, share: float) -> bool:
        return share > 0 and self._random.random() < share

    def due(self, reason: str, first: int, share: float) -> bool:
        """Whether a request that fault `reason` may befall gets it: one of the `first`,
        else by chance (`share`)."""
        return self.injected[reason] < first or self.roll(share)


def _faulty(request: rendering.Request) -> bool:
    agent = request.headers.get("User-Agent", "")
    return request.resource is not None and agent != TEST_CLIENT


class ApiServerEmulator(kmock.KubernetesEmulator):
    faults: Faults
    watches: set[rendering.Request]  # in flight, for drop_watches()
    compacted: int

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.faults = Faults()
        self.watches = set()
        self._buses = collections.defaultdict(_versioned_bus)
        self.compacted = 0  # watches resuming from an older resourceVersion get 410 Gone

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock cannot parse the path of the Namespaces collection (it reads the
        # `namespaces/` of namespaced paths): answered here, from the namespaces the
        # stored objects are in, as the API server's automatic ones would be.
        if raw_request.path.rstrip("/") == "/api/v1/namespaces":
            return await self._serve_namespaces(raw_request)
        response: aiohttp.web.StreamResponse = await super().__call__(raw_request)
        return response

    async def _serve_namespaces(self, raw_request: aiohttp.web.BaseRequest
                                ) -> aiohttp.web.StreamResponse:
        if raw_request.query.get("watch") not in ("true", "1"):
            names = {"default"} | {namespace for (_, namespace, _), obj in self._objects.items()
                                   if namespace and not obj.deleted}
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "NamespaceList",
                "metadata": {"resourceVersion": str(_versions.current)},
                "items": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {
                    "name": name, "labels": {"kubernetes.io/metadata.name": name}}}
                    for name in sorted(names)]})
        # No namespace is ever created or deleted here: the watch stays quiet until
        # its client goes or its timeout ends.
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw_request)
        deadline = asyncio.get_running_loop().time() + float(
            raw_request.query.get("timeoutSeconds") or 300)
        while raw_request.transport is not None and not raw_request.transport.is_closing() \
                and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.5)
        return response

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        """kmock's listing, with the resourceVersion a watch can resume from. Taken
        before listing: a write racing the list is then sent twice, never lost."""
        version = _versions.current
        listed = await super()._serve_list(request)
        assert isinstance(listed, dict)
        listed["metadata"] = {"resourceVersion": str(version)}
        return listed

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        """From a resourceVersion: every event after it, then live ones, as kube-apiserver
        does (410 Gone if it is older than the last compaction). Without one, kmock's:
        the current objects as ADDED, then live events."""
        since = request.params.get("resourceVersion", "")
        if not since.isdigit() or since == "0":
            async for item in super()._serve_watch(request):
                yield item
            return
        yield b""  # the headers, now
        if int(since) < self.compacted:
            self.faults.injected["Expired"] += 1
            yield {"type": "ERROR", "object": {
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": 410, "reason": "Expired",
                "message": f"too old resource version: {since} ({self.compacted})"}}
            return
        assert request.resource is not None
        bus = self._buses[request.resource]
        assert isinstance(bus, _VersionedBus)
        marker = await bus.mark()  # before reading the log: nothing falls in between
        try:
            replayed = set()
            for version, event in list(bus.log):
                if version > int(since) and _watched_by(request, event):
                    replayed.add(version)
                    yield event
            async for event in bus.stream(since=marker):
                if _version_of(event) not in replayed and _watched_by(request, event):
                    yield event
        finally:
            await bus.unmark(marker)

    def compact(self) -> None:
        """Forget the event history, as etcd's compaction does."""
        self.compacted = _versions.current

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None:
            return await super()._handle(request)
        if _faulty(request):
            fault = self._fault_before(request)
            if fault is not None:
                self.faults.injected[fault.reason or ""] += 1
                return await self._render_error(fault)
            if request.method in ("POST", "PUT", "DELETE") and \
                    self.faults.due("LostAnswer", self.faults.first_lost_answers,
                                    self.faults.lost_answers):
                await self._handle_in_order(request)
                self.faults.injected["LostAnswer"] += 1
                return await self._render_error(kmock.KubernetesError(
                    status=500, reason="LostAnswer",
                    message="Timeout: request did not complete within the allowed duration"))
        if request.action == kmock.action.WATCH:
            self.watches.add(request)
            try:
                return await self._handle_in_order(request)
            finally:
                self.watches.discard(request)
        return await self._handle_in_order(request)

    def _fault_before(self, request: rendering.Request) -> kmock.KubernetesError | None:
        faults = self.faults
        listing = request.action in (kmock.action.WATCH, kmock.action.LIST)
        if faults.refuse_watches and listing:
            return kmock.KubernetesError(status=500, reason="WatchRefused",
                                         message="the watch cache is not ready")
        if faults.roll(faults.errors):
            return kmock.KubernetesError(status=500, reason="InternalError",
                                         message="an injected internal error")
        if request.name is not None and request.method in ("PUT", "PATCH", "DELETE") and \
                faults.due("Conflict", faults.first_conflicts, faults.conflicts):
            return kmock.KubernetesError(
                status=409, reason="Conflict",
                message="Operation cannot be fulfilled: the object has been modified; "
                        "please apply your changes to the latest version and try again")
        return None

    def drop_watches(self) -> int:
        """Close the connection of every open watch, as a restarting API server does."""
        dropped = 0
        for request in list(self.watches):
            raw = request._raw_request  # the emulator's own request type
            if raw is not None and raw.transport is not None:
                raw.transport.close()
                dropped += 1
        return dropped

    async def break_watches(self) -> None:
        """An ERROR event (500) in every cluster-wide watch stream, as a real API server
        sends when it cannot go on (a failed decode, an etcd error)."""
        status = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                  "code": 500, "reason": "InternalError",
                  "message": "an error on the server has prevented the request from succeeding"}
        for bus in list(self._buses.values()):
            await bus.put({"type": "ERROR", "object": status})

    async def _handle_in_order(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """What a well-behaved API server does with the request."""
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            metadata = request.data.setdefault("metadata", {})
            metadata.update(
                uid=str(uuid.uuid4()),
                creationTimestamp=datetime.datetime.now(datetime.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"),
                resourceVersion=_versions.next(),
                generation=1,
            )
            if _has_status(request):
                request.data.pop("status", None)
        elif request.method == "PUT" and request.name is not None:
            # kmock does not route PUT at all: a replace is answered here.
            try:
                return aiohttp.web.json_response(await self._replace(request))
            except kmock.KubernetesError as err:
                return await self._render_error(err)
        elif request.action == kmock.action.UPDATE and isinstance(request.data, dict):
            request.data.setdefault("metadata", {})["resourceVersion"] = _versions.next()
        elif request.action == kmock.action.DELETE and request.name is not None:
            await self._collect_dependents(request)
        return await super()._handle(request)

    async def _replace(self, request: rendering.Request) -> dict[str, Any]:
        assert request.resource is not None and request.name is not None
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise KubernetesObjectNotFoundError()
            stored: dict[str, Any] = self._objects[key].raw
            body: dict[str, Any] = request.data
            wanted_version = (body.get("metadata") or {}).get("resourceVersion")
            if wanted_version and wanted_version != stored["metadata"].get("resourceVersion"):
                raise KubernetesObjectConflictError()
            if request.subresource == "status":
                new = dict(stored, status=body.get("status"))
            else:
                new = dict(body)
                if _has_status(request):
                    new.pop("status", None)
                    if "status" in stored:
                        new["status"] = stored["status"]
                metadata = dict(body.get("metadata") or {})
                for server_field in ("uid", "creationTimestamp", "generation"):
                    if server_field in stored["metadata"]:
                        metadata[server_field] = stored["metadata"][server_field]
                if new.get("spec") != stored.get("spec"):
                    metadata["generation"] = stored["metadata"].get("generation", 1) + 1
                new["metadata"] = metadata
            new["metadata"] = dict(new["metadata"], resourceVersion=_versions.next())
            self._objects[key].history.append(k8s_dicts.ObjectVersion(new))
            await self._buses[request.resource].put({"type": "MODIFIED", "object": new})
            return new

    async def _collect_dependents(self, request: rendering.Request) -> None:
        assert request.resource is not None and request.name is not None
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                return
            owner_uids = {self._objects[key].raw["metadata"].get("uid")}
            deleted: list[tuple[Any, dict[str, Any]]] = []
            changed = True
            while changed:  # dependents of dependents, until nothing more goes
                changed = False
                for other_key, obj in self._objects.items():
                    if other_key == key or obj.deleted:
                        continue
                    refs = obj.raw["metadata"].get("ownerReferences") or []
                    if any(ref.get("uid") in owner_uids for ref in refs):
                        raw = obj.raw
                        obj.delete()
                        owner_uids.add(raw["metadata"].get("uid"))
                        deleted.append((other_key[0], raw))
                        changed = True
            for resource, raw in deleted:
                await self._buses[resource].put({"type": "DELETED", "object": raw})


def _watched_by(request: rendering.Request, event: dict[str, Any]) -> bool:
    namespace = ((event.get("object") or {}).get("metadata") or {}).get("namespace")
    return request.namespace is None or namespace == request.namespace


async def _call_soon(function: Any) -> Any:
    return function()


def _has_status(request: rendering.Request) -> bool:
    """Kinds whose status is a subresource (ours and Ingress; not Secret or Lease)."""
    return request.resource is not None and request.resource.plural in (
        *CERTCTL_RESOURCES, "ingresses", "services")


class Cluster:
    """The emulator on loopback, served from a background event loop."""

    def __init__(self, *, with_crds: bool = True) -> None:
        self._with_crds = with_crds
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube-emulator",
                                        daemon=True)
        self._stack: Any = None
        self.emulator: ApiServerEmulator | None = None
        self.url = ""

    def start(self) -> None:
        self._thread.start()
        self.url = self._run(self._start())

    async def _start(self) -> str:
        import contextlib

        self._stack = contextlib.AsyncExitStack()
        emulator = ApiServerEmulator()
        emulator.resources.load_bundled()
        # kmock's bundle predates ListenerSet (Gateway API v1.5), which certctl reads.
        added = [kinds.BY_KIND["ListenerSet"]]
        if self._with_crds:
            added += CERTCTL_RESOURCES.values()
        for info in added:
            emulator.resources[f"{info.api_version}/{info.plural}"] = kmock.ResourceInfo(
                kind=info.kind, singular=info.kind.lower(), namespaced=info.namespaced,
                subresources={"status"}, verbs={"list", "watch", "get", "create", "update",
                                                 "patch", "delete"})
        await self._stack.enter_async_context(emulator)
        server = await self._stack.enter_async_context(kmock.Server(emulator))
        self.emulator = emulator
        return str(server.url).rstrip("/")

    def stop(self) -> None:
        if self._stack is not None:
            self._run(self._stack.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(30)

    def configuration(self) -> kubernetes.client.Configuration:
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.api_key = {"authorization": "Bearer test-token"}
        return configuration

    def store(self) -> KubeStore:
        return KubeStore(configuration=self.configuration(), component=TEST_CLIENT)

    @property
    def faults(self) -> Faults:
        assert self.emulator is not None
        return self.emulator.faults

    def open_watches(self) -> int:
        assert self.emulator is not None
        return len(self.emulator.watches)

    def drop_watches(self) -> int:
        """Close every open watch connection; the number closed."""
        assert self.emulator is not None
        emulator = self.emulator
        dropped: int = self._run(_call_soon(emulator.drop_watches))
        return dropped

    def compact(self) -> None:
        """Forget the event history: watches resuming from before now get 410 Gone."""
        assert self.emulator is not None
        self.emulator.compact()

    def break_watches(self) -> None:
        """Send an ERROR event down every cluster-wide watch stream."""
        assert self.emulator is not None
        self._run(self.emulator.break_watches())

    def requests(self) -> list[rendering.Request]:
        """Every request the emulator was sent, in order."""
        assert self.emulator is not None
        return list(self.emulator)

    def objects(self, kind: str) -> Iterator[dict[str, Any]]:
        """What the emulator holds of one kind, read directly (no API call)."""
        assert self.emulator is not None
        plural = RESOURCES[kind].plural
        for (resource, _namespace, _name), obj in list(self.emulator.objects.items()):
            if resource.plural == plural and not obj.deleted:
                yield obj.raw


DATA_PLANE = http01_ingress.DataPlaneService(namespace="certctl", name="certctl-dataplane")


class Deployment:
    """The controller (one replica per `add_controller`) and one data plane, in-process."""

    def __init__(self, *, cluster: Cluster, pebble: PebbleServer,
                 namespaces: tuple[str, ...] = (),
                 dataplane_namespaces: tuple[str, ...] | None = None) -> None:
        """`namespaces`: what the controllers watch (`--namespace`), and the data plane
        unless `dataplane_namespaces` says otherwise; empty: the whole cluster."""
        self.cluster = cluster
        self.pebble = pebble
        self.namespaces = namespaces
        self.controllers: list[operator.Controller] = []
        self.dataplane = operator.ClusterDataPlane(options=operator.DataPlaneOptions(
            configuration=cluster.configuration(),
            namespaces=namespaces if dataplane_namespaces is None else dataplane_namespaces,
            listening=dataplane_feed.Listening(
                address="127.0.0.1", http_port=pebble.http_port, https_port=free_port(),
                ingress_class="certctl", load_balancer_address="203.0.113.7"),
        ))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> Deployment:
        """The data plane and one controller replica, both watching."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.dataplane.start(), self._loop).result(30)
        self.add_controller(identity="replica-0")
        return self

    def add_controller(self, *, identity: str,
                       self_check_port: int | None = None) -> operator.Controller:
        controller = operator.Controller(options=operator.ControllerOptions(
            configuration=self.cluster.configuration(),
            namespaces=self.namespaces,
            election=leader.ElectionSettings(namespace="certctl", name="certctl-controller",
                                             identity=identity, lease_duration=3.0,
                                             renew_deadline=2.0, retry_period=0.2),
            data_plane=DATA_PLANE,
            self_check_address="127.0.0.1",
            self_check_port=self_check_port or self.pebble.http_port,
            workers=4,
            backoff_base=datetime.timedelta(seconds=1),
            metrics_address=("127.0.0.1", free_port()),
        ))
        controller.start()
        self.controllers.append(controller)
        return controller

    def stop(self) -> None:
        for controller in self.controllers:
            controller.stop()
        asyncio.run_coroutine_threadsafe(self.dataplane.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def https_port(self) -> int:
        port = self.dataplane.edge.server.https_port
        assert port is not None
        return port
