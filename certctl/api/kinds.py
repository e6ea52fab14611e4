"""The kinds certctl reads and writes, with their apiVersion and scope."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class KindInfo:
    kind: str
    api_version: str
    namespaced: bool
    plural: str


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

BY_KIND: dict[str, KindInfo] = {info.kind: info for info in _KINDS}



def lookup(kind: str) -> KindInfo | None:
    return BY_KIND.get(kind)
