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
- deleting an owner deletes its dependents (the garbage collector's job).

The emulator runs on its own event loop in a background thread, so tests and
the operator can talk to it through ordinary blocking clients.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import aiohttp.web
import kmock
import kubernetes.client
from kmock._internal import k8s_dicts, rendering  # the emulator's own object and request types
from kmock._internal.k8s import KubernetesObjectConflictError, KubernetesObjectNotFoundError

from certctl.store.kube import RESOURCES, KubeStore

# Our CRDs as the emulator should list them (discovery), from crds/ in spirit.
CERTCTL_RESOURCES = {
    "clusterissuers": ("ClusterIssuer", False),
    "issuers": ("Issuer", True),
    "certificates": ("Certificate", True),
    "orders": ("Order", True),
    "challenges": ("Challenge", True),
}
_versions = itertools.count(1)


class ApiServerEmulator(kmock.KubernetesEmulator):
    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None:
            return await super()._handle(request)
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            metadata = request.data.setdefault("metadata", {})
            metadata.update(
                uid=str(uuid.uuid4()),
                creationTimestamp=datetime.datetime.now(datetime.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"),
                resourceVersion=str(next(_versions)),
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
            request.data.setdefault("metadata", {})["resourceVersion"] = str(next(_versions))
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
            new["metadata"] = dict(new["metadata"], resourceVersion=str(next(_versions)))
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
        for plural, (kind, namespaced) in (CERTCTL_RESOURCES if self._with_crds else {}).items():
            emulator.resources[f"certctl.io/v1/{plural}"] = kmock.ResourceInfo(
                kind=kind, singular=kind.lower(), namespaced=namespaced,
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
        return KubeStore(configuration=self.configuration(), component="certctl-test")

    def objects(self, kind: str) -> Iterator[dict[str, Any]]:
        """What the emulator holds of one kind, read directly (no API call)."""
        assert self.emulator is not None
        plural = RESOURCES[kind].plural
        for (resource, _namespace, _name), obj in list(self.emulator.objects.items()):
            if resource.plural == plural and not obj.deleted:
                yield obj.raw
