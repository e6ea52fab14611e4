"""The data plane feed over a real store: Ingress status, Secrets to certificates, classes.

The store is the file-backed LocalStore `certctl serve` uses; the feed only
speaks the Store protocol, so the same behaviour holds against the
Kubernetes API. `refresh()` is called directly, so nothing here waits on
the feed's debounce thread.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from certctl.api.resources import ObjectKey
from certctl.dataplane import certstore, routing
from certctl.runtime import dataplane_feed
from certctl.store.local import LocalStore
from tests.handshake import presented_leaf
from tests.testca import Issued, TestCA


def ingress_manifest(
    name: str, *, host: str, secret_name: str, class_name: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tls": [{"hosts": [host], "secretName": secret_name}],
        "rules": [{"host": host, "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}},
        }]}}],
    }
    if class_name:
        spec["ingressClassName"] = class_name
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def tls_secret(name: str, issued: Issued) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": "default"},
        "data": {
            "tls.crt": base64.b64encode(issued.chain_pem).decode(),
            "tls.key": base64.b64encode(issued.key_pem).decode(),
        },
    }


class Fixture:
    def __init__(self, tmp_path: Path, *, address: str | None,
                 on_loaded: Callable[[], None] | None = None) -> None:
        self.store = LocalStore(manifests_dir=None, state_dir=tmp_path / "state")
        self.certificates = certstore.CertificateIndex()
        self.tables: list[routing.RouteTable] = []
        self.writes: list[ObjectKey] = []
        self.feed = dataplane_feed.DataPlaneFeed(
            store=self.store,
            certificates=self.certificates,
            publish_routes=self.tables.append,
            ingress_class="certctl",
            load_balancer_address=address,
            on_loaded=on_loaded,
        )
        self.store.subscribe(self._on_event)
        self.ca = TestCA()

    def _on_event(self, event: Any) -> None:
        if event.key.kind == "Ingress" and event.type == "MODIFIED":
            self.writes.append(event.key)
        self.feed.on_event(event)

    def status(self, name: str) -> Any:
        obj = self.store.get(kind="Ingress", namespace="default", name=name)
        assert obj is not None
        return obj.get("status")


@pytest.mark.parametrize(
    ("address", "entry"),
    [("203.0.113.7", {"ip": "203.0.113.7"}), ("lb.example.test", {"hostname": "lb.example.test"})],
)
def test_served_ingress_reports_the_load_balancer_address_once(tmp_path, address, entry):
    env = Fixture(tmp_path, address=address)
    env.store.create(obj=ingress_manifest("web", host="web.test", secret_name="web-tls"))
    env.feed.refresh()
    assert env.status("web") == {"loadBalancer": {"ingress": [entry]}}
    writes = len(env.writes)
    env.feed.refresh()  # routes rebuilt after our own status write: nothing left to write
    env.feed.refresh()
    assert len(env.writes) == writes == 1


def test_ingress_of_another_class_gets_no_status_and_loses_ours(tmp_path):
    env = Fixture(tmp_path, address="203.0.113.7")
    env.store.create(obj=ingress_manifest("web", host="web.test", secret_name="web-tls"))
    env.store.create(obj=ingress_manifest("theirs", host="theirs.test", secret_name="theirs-tls",
                                          class_name="nginx"))
    env.feed.refresh()
    assert env.status("theirs") is None
    moved = env.store.get(kind="Ingress", namespace="default", name="web")
    assert moved is not None
    moved["spec"]["ingressClassName"] = "nginx"
    env.store.replace(obj=moved)
    env.feed.refresh()
    assert env.status("web") == {"loadBalancer": {}}


def test_without_an_address_statuses_are_left_alone(tmp_path):
    env = Fixture(tmp_path, address=None)
    env.store.create(obj=ingress_manifest("web", host="web.test", secret_name="web-tls"))
    env.feed.refresh()
    assert env.status("web") is None
    assert env.writes == []


def test_updated_secret_replaces_the_served_certificate(tmp_path):
    env = Fixture(tmp_path, address=None)
    first, renewed = env.ca.issue("web.test", days=1), env.ca.issue("web.test", days=2)
    env.store.create(obj=ingress_manifest("web", host="web.test", secret_name="web-tls"))
    env.store.create(obj=tls_secret("web-tls", first))
    env.feed.refresh()
    source = ObjectKey(kind="Secret", namespace="default", name="web-tls")
    assert env.certificates.names() == {"web.test": source}
    (loaded,) = env.certificates.loaded()
    secret = env.store.get(kind="Secret", namespace="default", name="web-tls")
    assert secret is not None
    secret["data"] = tls_secret("web-tls", renewed)["data"]
    env.store.replace(obj=secret)
    env.feed.refresh()
    (reloaded,) = env.certificates.loaded()
    assert reloaded[1] > loaded[1]  # the renewed leaf, which expires a day later


def test_secret_of_an_ingress_served_by_another_controller_is_not_loaded(tmp_path):
    env = Fixture(tmp_path, address=None)
    env.store.create(obj=ingress_manifest("theirs", host="theirs.test", secret_name="theirs-tls",
                                          class_name="nginx"))
    env.store.create(obj=tls_secret("theirs-tls", env.ca.issue("theirs.test")))
    env.feed.refresh()
    assert env.certificates.names() == {}


def test_unenforced_access_annotation_is_a_warning_event_once_and_only_for_our_ingresses(
    tmp_path, caplog
):
    env = Fixture(tmp_path, address=None)
    admin = ingress_manifest("admin", host="admin.test", secret_name="admin-tls")
    admin["metadata"]["annotations"] = {
        "nginx.ingress.kubernetes.io/auth-proxy-set-headers": "default/h"}
    theirs = ingress_manifest("theirs", host="theirs.test", secret_name="theirs-tls",
                              class_name="nginx")
    theirs["metadata"]["annotations"] = dict(admin["metadata"]["annotations"])
    env.store.create(obj=admin)
    env.store.create(obj=theirs)
    caplog.set_level("WARNING")
    env.feed.refresh()
    warnings = [r.getMessage() for r in caplog.records if "AccessNotEnforced" in r.getMessage()]
    assert len(warnings) == 1
    assert "Ingress default/admin" in warnings[0]
    assert "nginx.ingress.kubernetes.io/auth-proxy-set-headers" in warnings[0]
    match = env.tables[-1].match(host="admin.test", path="/")
    assert match is not None and match.options.refusal is not None
    caplog.clear()
    env.store.create(obj=ingress_manifest("other", host="other.test", secret_name="other-tls"))
    env.feed.refresh()  # rebuilt for another Ingress: the same problem is not reported again
    assert not [r for r in caplog.records if "AccessNotEnforced" in r.getMessage()]


def test_start_loads_routes_and_certificates_and_leaves_the_statuses_to_its_thread(tmp_path):
    """`certctl serve` starts the feed on the loop its data plane serves from: the
    statuses of every Ingress (seconds, with 10,000) must not hold that loop once ready."""
    loaded: list[str] = []
    env = Fixture(tmp_path, address="203.0.113.7",
                  on_loaded=lambda: loaded.append(threading.current_thread().name))
    issued = env.ca.issue("web.test")
    env.store.create(obj=tls_secret("web-tls", issued))
    env.store.create(obj=ingress_manifest("web", host="web.test", secret_name="web-tls"))
    writers: list[str] = []
    env.store.subscribe(lambda event: writers.append(threading.current_thread().name)
                        if event.key.kind == "Ingress" and event.type == "MODIFIED" else None)

    env.feed.start()
    try:
        assert loaded == [threading.current_thread().name]
        assert env.tables and env.tables[-1].match(host="web.test", path="/") is not None
        assert env.certificates.has_certificate_for("web.test")
        deadline = time.monotonic() + 10
        while env.status("web") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert env.status("web") == {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}
        assert writers and threading.current_thread().name not in writers, writers
    finally:
        env.feed.stop()


def _presented_serial(presented: certstore.Presented, *, name: str, ca: TestCA) -> int:
    """The serial of the leaf `presented` in a TLS handshake for SNI `name`."""
    return presented_leaf(presented, name=name, cadata=ca.pem.decode()).serial_number


def test_facts_handed_to_a_new_index_serve_the_same_secret_content_and_no_other(
    tmp_path, caplog,
):
    """A restart of `certctl serve` serves the Secrets it served before from their facts
    (names, expiry) instead of parsing them; a content that changed meanwhile is parsed,
    and one that never served (its key belongs to another certificate) has no facts."""
    env = Fixture(tmp_path, address=None)
    first, other = env.ca.issue("web.test"), env.ca.issue("web.test")
    env.store.create(obj=tls_secret("web-tls", first))
    env.store.create(obj=ingress_manifest("web", host="web.test", secret_name="web-tls"))
    env.store.create(obj={**tls_secret("bad-tls", first),
                          "data": {**tls_secret("bad-tls", first)["data"],
                                   "tls.key": base64.b64encode(other.key_pem).decode()}})
    env.store.create(obj=ingress_manifest("bad", host="bad.test", secret_name="bad-tls"))
    env.feed.refresh()
    facts = env.certificates.known_facts()
    assert [known.names for known in facts.values()] == [("web.test",)]

    again = certstore.CertificateIndex()
    again.remember(facts)
    feed = dataplane_feed.DataPlaneFeed(store=env.store, certificates=again,
                                        publish_routes=lambda table: None,
                                        ingress_class="certctl", load_balancer_address=None)
    caplog.set_level(logging.INFO, logger="certctl.runtime.dataplane_feed")
    feed.refresh()
    assert "serving certificates from 1 Secrets (1 of them as parsed before the last stop)" \
        in caplog.messages
    assert _presented_serial(again.select("web.test"), name="web.test",
                             ca=env.ca) == first.serial
    assert again.select("bad.test") is again.default_context

    # The Secret renewed meanwhile: its new content is parsed, not served by the old facts.
    renewed = env.ca.issue("web.test", "www.web.test")
    stored = env.store.get(kind="Secret", namespace="default", name="web-tls")
    assert stored is not None
    env.store.replace(obj={**stored, "data": tls_secret("web-tls", renewed)["data"]})
    third = certstore.CertificateIndex()
    third.remember(facts)
    dataplane_feed.DataPlaneFeed(store=env.store, certificates=third,
                                 publish_routes=lambda table: None, ingress_class="certctl",
                                 load_balancer_address=None).refresh()
    assert third.has_certificate_for("www.web.test")
    assert _presented_serial(third.select("web.test"), name="web.test",
                             ca=env.ca) == renewed.serial
