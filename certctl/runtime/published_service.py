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
import kubernetes.watch

logger = logging.getLogger(__name__)

# A watch the server ends after this long is simply started again; the read timeout
# beyond it notices a connection that went silent.
WATCH_SECONDS = 300
READ_TIMEOUT = WATCH_SECONDS + 30
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
        self._api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))
        self._on_change = on_change
        self._published: list[dict[str, str]] | None = None
        self._stopping = threading.Event()
        self._watch: kubernetes.watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name="publish-service", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; the thread ends with its current read (it is a daemon)."""
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()  # type: ignore[no-untyped-call]

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
        selector = f"metadata.name={self.name}"
        found = self._api.list_namespaced_service(
            self.namespace, field_selector=selector, _request_timeout=30)
        items = self._api.api_client.sanitize_for_serialization(found.items)
        self._publish(items[0] if items else None)
        self._watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        version = found.metadata.resource_version if found.metadata is not None else None
        for event in self._watch.stream(  # type: ignore[no-untyped-call]
                self._api.list_namespaced_service, self.namespace, field_selector=selector,
                resource_version=version,
                timeout_seconds=WATCH_SECONDS, _request_timeout=READ_TIMEOUT):
            if self._stopping.is_set():
                return
            if event["type"] == "ERROR":  # 410 Gone and the like: list again
                raise RuntimeError(f"watch error: {event['raw_object']}")
            self._publish(None if event["type"] == "DELETED" else event["raw_object"])

    def _publish(self, service: dict[str, Any] | None) -> None:
        entries = load_balancer_entries(service)
        if entries != self._published:
            self._published = entries
            logger.info("--publish-service %s/%s: Ingresses served get %s", self.namespace,
                        self.name, entries or "no address (the Service has none yet)")
            self._on_change(entries)
