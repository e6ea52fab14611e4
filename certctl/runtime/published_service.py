"""The data plane's own Service, watched for the addresses its Ingresses publish.

As ingress-nginx's `--publish-service NAMESPACE/NAME`: the addresses a cloud
load balancer gave the Service (`status.loadBalancer.ingress`, an `ip` or a
`hostname` each) and its `spec.externalIPs` go into the status of every
Ingress the data plane serves (`DataPlaneFeed.set_load_balancer`), and follow
the Service when they change. One object is watched, by name
(`fieldSelector=metadata.name=NAME`, which RBAC authorises as that name): the
service account needs `get`, `list` and `watch` on that one Service, in its
namespace, whatever namespaces the data plane serves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import kubernetes.client

from certctl.store.kube import KubeStore

logger = logging.getLogger(__name__)

# A watch the server ends after this long is simply started again (the store's read
# timeout beyond it notices a connection that went silent).
WATCH_SECONDS = 300
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0


def parse_reference(text: str) -> tuple[str, str]:
    """`NAMESPACE/NAME` -> (namespace, name); ValueError naming the flag otherwise."""
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"--publish-service {text!r}: expected NAMESPACE/NAME")
    return namespace, name


def load_balancer_entries(service: dict[str, Any] | None) -> list[dict[str, str]]:
    """The `status.loadBalancer.ingress` entries a Service's addresses make (its load
    balancer's, then its external IPs), without duplicates; none for no Service."""
    if service is None:
        return []
    entries: list[dict[str, str]] = []
    for item in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        if isinstance(item, dict) and isinstance(item.get("ip"), str) and item["ip"]:
            entries.append({"ip": item["ip"]})
        elif isinstance(item, dict) and isinstance(item.get("hostname"), str) and \
                item["hostname"]:
            entries.append({"hostname": item["hostname"]})
    for address in (service.get("spec") or {}).get("externalIPs") or []:
        if isinstance(address, str) and address:
            entries.append({"ip": address})
    unique: list[dict[str, str]] = []
    for entry in entries:
        if entry not in unique:
            unique.append(entry)
    return unique


class PublishedService:
    """Watches one Service on a thread of its own and calls `on_change` with its entries,
    once at start and again whenever they change."""

    def __init__(self, *, configuration: kubernetes.client.Configuration, namespace: str,
                 name: str, on_change: Callable[[list[dict[str, str]]], None]) -> None:
        self.namespace = namespace
        self.name = name
        # A store of its own: stop() ends its watch alone. Not the `kubernetes` client's
        # generated API: importing it took 1.4 s of a replica's start (bench B8).
        self._store = KubeStore(configuration=configuration, component="certctl-dataplane",
                                namespaces=(namespace,))
        self._on_change = on_change
        self._published: list[dict[str, str]] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publish-service", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; the thread ends with its current read (it is a daemon)."""
        self._stopping.set()
        self._store.close()

    def _run(self) -> None:
        retry = FIRST_RETRY_SECONDS
        while not self._stopping.is_set():
            try:
                self._list_and_watch()
                retry = FIRST_RETRY_SECONDS
            except Exception as err:  # the API down, RBAC missing: said, then retried
                if self._stopping.is_set():
                    return
                logger.warning("--publish-service %s/%s: %s; retrying in %.0f s",
                               self.namespace, self.name, err, retry)
                self._stopping.wait(retry)
                retry = min(retry * 2, MAX_RETRY_SECONDS)

    def _list_and_watch(self) -> None:
        """List the Service, then watch it from that listing until the server ends the
        stream; raises when the watch expired (410: listed again) or failed."""
        fields = {"metadata.name": self.name}
        [(_, version, items)] = self._store.list_with_versions(kind="Service", fields=fields)
        self._publish(items[0] if items else None)
        for event_type, service in self._store.watch(
                kind="Service", namespace=self.namespace, since=version,
                seconds=WATCH_SECONDS, fields=fields):
            if self._stopping.is_set():
                return
            if event_type != "BOOKMARK":
                self._publish(None if event_type == "DELETED" else service)

    def _publish(self, service: dict[str, Any] | None) -> None:
        entries = load_balancer_entries(service)
        if entries != self._published:
            self._published = entries
            logger.info("--publish-service %s/%s: Ingresses served get %s", self.namespace,
                        self.name, entries or "no address (the Service has none yet)")
            self._on_change(entries)
