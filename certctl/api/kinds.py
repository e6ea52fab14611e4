"""The kinds certctl reads and writes, with their apiVersion, scope and plural: the one
table of them. The local store takes scopes and apiVersions from it, the Kubernetes store
its REST paths, the tests' API emulator its resources."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class KindInfo:
    kind: str
    api_version: str
    namespaced: bool
    plural: str

    @property
    def group(self) -> str:
        """The API group: "" for the core group (apiVersion `v1`)."""
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


_KINDS = (
    KindInfo(
        kind="ClusterIssuer", api_version="certctl.io/v1", namespaced=False, plural="clusterissuers"
    ),
    KindInfo(kind="Issuer", api_version="certctl.io/v1", namespaced=True, plural="issuers"),
    KindInfo(
        kind="Certificate", api_version="certctl.io/v1", namespaced=True, plural="certificates"
    ),
    KindInfo(kind="Order", api_version="certctl.io/v1", namespaced=True, plural="orders"),
    KindInfo(kind="Challenge", api_version="certctl.io/v1", namespaced=True, plural="challenges"),
    KindInfo(kind="Secret", api_version="v1", namespaced=True, plural="secrets"),
    KindInfo(kind="Service", api_version="v1", namespaced=True, plural="services"),
    KindInfo(kind="Endpoints", api_version="v1", namespaced=True, plural="endpoints"),
    KindInfo(
        kind="EndpointSlice",
        api_version="discovery.k8s.io/v1",
        namespaced=True,
        plural="endpointslices",
    ),
    KindInfo(
        kind="Ingress", api_version="networking.k8s.io/v1", namespaced=True, plural="ingresses"
    ),
    KindInfo(
        kind="IngressClass",
        api_version="networking.k8s.io/v1",
        namespaced=False,
        plural="ingressclasses",
    ),
    KindInfo(
        kind="GatewayClass",
        api_version="gateway.networking.k8s.io/v1",
        namespaced=False,
        plural="gatewayclasses",
    ),
    KindInfo(
        kind="Gateway", api_version="gateway.networking.k8s.io/v1", namespaced=True,
        plural="gateways",
    ),
    KindInfo(
        kind="HTTPRoute", api_version="gateway.networking.k8s.io/v1", namespaced=True,
        plural="httproutes",
    ),
    KindInfo(
        kind="GRPCRoute", api_version="gateway.networking.k8s.io/v1", namespaced=True,
        plural="grpcroutes",
    ),
    KindInfo(
        kind="ListenerSet", api_version="gateway.networking.k8s.io/v1", namespaced=True,
        plural="listenersets",
    ),
    KindInfo(
        kind="ReferenceGrant",
        api_version="gateway.networking.k8s.io/v1beta1",
        namespaced=True,
        plural="referencegrants",
    ),
)

# What the cluster runtime reaches through the Kubernetes API besides, which `serve`'s
# manifests do not hold: the Namespaces a ListenerSet's Gateway admits by label, Events,
# the leader-election Lease.
_API_ONLY = (
    KindInfo(kind="Namespace", api_version="v1", namespaced=False, plural="namespaces"),
    KindInfo(kind="Event", api_version="v1", namespaced=True, plural="events"),
    KindInfo(kind="Lease", api_version="coordination.k8s.io/v1", namespaced=True,
             plural="leases"),
)

BY_KIND: dict[str, KindInfo] = {info.kind: info for info in _KINDS}
# Every kind the Kubernetes store reaches.
WITH_API_ONLY: dict[str, KindInfo] = {info.kind: info for info in (*_KINDS, *_API_ONLY)}


def lookup(kind: str) -> KindInfo | None:
    return BY_KIND.get(kind)
