"""The CRDs, the kustomize base and the cluster examples, checked without a cluster.

Offline, each of the API server's checks is done by a stand-in (the
tests/test_cluster_* suites make the same checks against a real one):
`kubectl kustomize` renders the base (the kubectl built from the Kubernetes
release the tests run, tests/testservers.py; set KUBECTL to try another); the official
Kubernetes OpenAPI schemas bundled by kubernetes-validate check the built-in
objects; certctl's own validator (certctl/api/schema.py: jsonschema over the
CRDs' openAPIV3Schema, closed as `kubectl apply`'s strict field validation
treats unknown fields, and cel-python for the x-kubernetes-validations rules)
checks our objects. And certctl.api.parsing must agree with the schemas both
ways: what the examples say parses, and what the schemas refuse, the parser
refuses too.
"""

from __future__ import annotations

import base64
import copy
import datetime
import functools
import os
import re
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from celpy import celparser

from certctl.api import conditions, errors, kinds, parsing, resources, schema
from certctl.runtime import dataplane_feed
from tests import testservers

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "crds"
MANIFESTS = ROOT / "manifests"
CLUSTER_EXAMPLES = ROOT / "examples" / "cluster"
NAMESPACE = "certctl"
IMAGE = "ghcr.io/certctl/certctl:0.1.0"
# CEL rules in CRDs are on by default from Kubernetes 1.25; the newest is
# whatever kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.25", kubernetes_validate.latest_version())

OUR_KINDS = {
    info.kind: info for info in kinds.BY_KIND.values() if info.api_version == "certctl.io/v1"
}
OUR_PLURALS = sorted(info.plural for info in OUR_KINDS.values())
READ_WRITE = ("get", "list", "watch", "create", "update", "patch", "delete")
READ = ("get", "list", "watch")

Rule = tuple[str, str, str]  # (apiGroup, resource, verb)


def _grants(*, groups: tuple[str, ...], resources: list[str] | tuple[str, ...],
            verbs: tuple[str, ...]) -> set[Rule]:
    return {(g, r, v) for g in groups for r in resources for v in verbs}


# Exactly what each ClusterRole may do; the comments in manifests/rbac-*.yaml say why.
# The *-namespaced ones are bound only by RoleBindings, in the watched namespaces.
CLUSTER_ROLE_GRANTS: dict[str, set[Rule]] = {
    "certctl-controller": (
        _grants(groups=("certctl.io",), resources=OUR_PLURALS, verbs=READ_WRITE)
        | _grants(groups=("certctl.io",), resources=[f"{p}/status" for p in OUR_PLURALS],
                  verbs=("get", "update", "patch"))
        | _grants(groups=("certctl.io",),
                  resources=("certificates/finalizers", "orders/finalizers",
                             "challenges/finalizers"), verbs=("update",))
        | _grants(groups=("gateway.networking.k8s.io",), resources=("gatewayclasses",),
                  verbs=READ)
        | _grants(groups=("",), resources=("namespaces",), verbs=READ)
    ),
    "certctl-controller-namespaced": (
        _grants(groups=("networking.k8s.io",), resources=("ingresses",), verbs=READ_WRITE)
        | _grants(groups=("gateway.networking.k8s.io",),
                  resources=("gateways", "listenersets", "httproutes"), verbs=READ)
        | _grants(groups=("gateway.networking.k8s.io",),
                  resources=("gateways/finalizers", "listenersets/finalizers",
                             "httproutes/finalizers"), verbs=("update",))
        | _grants(groups=("",), resources=("services",), verbs=("get", "create", "delete"))
        | _grants(groups=("",), resources=("secrets",), verbs=READ_WRITE)
        | _grants(groups=("", "events.k8s.io"), resources=("events",),
                  verbs=("create", "patch"))
    ),
    "certctl-dataplane": (
        _grants(groups=("networking.k8s.io",), resources=("ingressclasses",), verbs=READ)
        | _grants(groups=("certctl.io",), resources=("challenges",), verbs=READ)
        | _grants(groups=("gateway.networking.k8s.io",), resources=("gatewayclasses",),
                  verbs=READ)
        | _grants(groups=("gateway.networking.k8s.io",), resources=("gatewayclasses/status",),
                  verbs=("get", "update", "patch"))
        | _grants(groups=("",), resources=("namespaces",), verbs=READ)
    ),
    "certctl-dataplane-namespaced": (
        _grants(groups=("networking.k8s.io",), resources=("ingresses",), verbs=READ)
        | _grants(groups=("networking.k8s.io",), resources=("ingresses/status",),
                  verbs=("get", "update", "patch"))
        | _grants(groups=("gateway.networking.k8s.io",),
                  resources=("gateways", "listenersets", "httproutes", "grpcroutes",
                             "referencegrants"), verbs=READ)
        | _grants(groups=("gateway.networking.k8s.io",),
                  resources=("gateways/status", "listenersets/status", "httproutes/status",
                             "grpcroutes/status"),
                  verbs=("get", "update", "patch"))
        | _grants(groups=("",), resources=("services", "endpoints", "secrets"), verbs=READ)
        | _grants(groups=("discovery.k8s.io",), resources=("endpointslices",), verbs=READ)
        | _grants(groups=("", "events.k8s.io"), resources=("events",),
                  verbs=("create", "patch"))
    ),
}
# Where each component works (--namespace), and so where its *-namespaced role is bound.
WATCHED_NAMESPACES = {
    "certctl-controller": [NAMESPACE, "default"],
    "certctl-dataplane": ["default"],
}
WRITE = ("create", "update", "patch", "delete", "deletecollection", "escalate", "bind",
         "impersonate")


# --- loading --------------------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [obj for obj in _by_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _kubectl() -> str:
    return os.environ.get("KUBECTL") or str(testservers.binary("kubernetes", "kubectl"))


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """`kubectl kustomize manifests/`, as `kubectl apply -k` would send it."""
    result = subprocess.run([_kubectl(), "kustomize", str(MANIFESTS)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def _crds() -> dict[str, dict[str, Any]]:
    """Our CRDs by kind, read from crds/ as listed in its kustomization."""
    listed = _documents(CRDS / "kustomization.yaml")[0]["resources"]
    crds = [doc for name in listed for doc in _documents(CRDS / name)]
    return {crd["spec"]["names"]["kind"]: crd for crd in crds}


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = _crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _example_objects() -> list[tuple[str, dict[str, Any]]]:
    """(file#index, object) for examples/cluster/*.yaml and examples/*.yaml."""
    paths = sorted(CLUSTER_EXAMPLES.glob("*.yaml")) + sorted((ROOT / "examples").glob("*.yaml"))
    return [
        (f"{path.relative_to(ROOT)}#{index}", doc)
        for path in paths
        for index, doc in enumerate(_documents(path))
    ]


def _cluster_example(filename: str) -> dict[str, Any]:
    docs = _documents(CLUSTER_EXAMPLES / filename)
    assert len(docs) == 1
    return docs[0]


def _containers(deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers


# --- validating our kinds like the API server ------------------------------------------


def _violations(obj: Mapping[str, Any]) -> list[str]:
    """What the API server would say about one of our objects: schema errors, then CEL's
    (certctl/api/schema.py, which certctl validates with too)."""
    return [str(violation) for violation in schema.violations(obj)]


def _parse(obj: Mapping[str, Any]) -> object:
    parsers: dict[str, Callable[..., object]] = {
        "ClusterIssuer": parsing.parse_issuer,
        "Issuer": parsing.parse_issuer,
        "Certificate": parsing.parse_certificate,
        "Challenge": parsing.parse_challenge,
        "Ingress": parsing.parse_ingress,
    }
    return parsers[obj["kind"]](obj)


# --- (a) the base renders, with every component as documented --------------------------


def test_base_renders_every_component(rendered):
    assert sorted((obj["kind"], obj["metadata"]["name"]) for obj in rendered) == sorted([
        ("Namespace", NAMESPACE),
        *(("CustomResourceDefinition", f"{info.plural}.certctl.io")
          for info in OUR_KINDS.values()),
        ("ServiceAccount", "certctl-controller"),
        ("ServiceAccount", "certctl-dataplane"),
        ("ClusterRole", "certctl-controller"),
        ("ClusterRole", "certctl-controller-namespaced"),
        ("ClusterRoleBinding", "certctl-controller"),
        ("RoleBinding", "certctl-controller"),
        ("RoleBinding", "certctl-controller"),
        ("Role", "certctl-controller-leader-election"),
        ("RoleBinding", "certctl-controller-leader-election"),
        ("ClusterRole", "certctl-dataplane"),
        ("ClusterRole", "certctl-dataplane-namespaced"),
        ("ClusterRoleBinding", "certctl-dataplane"),
        ("RoleBinding", "certctl-dataplane"),
        ("Role", "certctl-dataplane-publish-service"),
        ("RoleBinding", "certctl-dataplane-publish-service"),
        ("Deployment", "certctl-controller"),
        ("Deployment", "certctl-dataplane"),
        ("Service", "certctl-dataplane"),
        ("IngressClass", "certctl"),
    ])
    namespaced = {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Service"}
    watched = {ns for namespaces in WATCHED_NAMESPACES.values() for ns in namespaces}
    for obj in rendered:
        if obj["kind"] == "RoleBinding":  # in the namespaces where certctl works
            assert obj["metadata"].get("namespace") in watched, obj["metadata"]
        elif obj["kind"] in namespaced:
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "certctl"


def test_base_carries_the_crds_unchanged(rendered):
    for crd in _by_kind(rendered, "CustomResourceDefinition"):
        source = _crds()[crd["spec"]["names"]["kind"]]
        assert crd["spec"] == source["spec"], crd["metadata"]["name"]


def test_controller_runs_the_controller_command_with_leader_election(rendered):
    deployment = _one(rendered, "Deployment", "certctl-controller")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "certctl-controller"
    (container,) = _containers(deployment)
    assert container["image"] == IMAGE
    assert container["command"] + container["args"] == [
        "certctl", "controller",
        "--cluster-resource-namespace", NAMESPACE,
        "--leader-election-namespace", NAMESPACE,
        "--solver-service", f"{NAMESPACE}/certctl-dataplane", "--ingress-class", "certctl",
        "--metrics-address", "$(POD_IP),127.0.0.1", "--metrics-port", "9402",
        "--namespace", NAMESPACE, "--namespace", "default",
    ]
    assert container["env"] == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    _probes_the_admin_address(container)


def _probes_the_admin_address(container: dict[str, Any]) -> None:
    """Liveness on /healthz and readiness on /readyz of the admin address, which listens on
    the pod's IP (kubelet probes it there) and loopback (kubectl port-forward), never on
    all addresses, at the port the container names `metrics`."""
    args = container["args"]
    assert args[args.index("--metrics-address") + 1] == "$(POD_IP),127.0.0.1"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == int(args[args.index("--metrics-port") + 1])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}


def test_data_plane_runs_the_dataplane_command_and_probes_its_admin_address(rendered):
    deployment = _one(rendered, "Deployment", "certctl-dataplane")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "certctl-dataplane"
    (container,) = _containers(deployment)
    assert container["image"] == IMAGE
    command = container["command"] + container["args"]
    assert command == [
        "certctl", "dataplane", "--http-port", "8080", "--https-port", "8443",
        "--ingress-class", "certctl",
        "--metrics-address", "$(POD_IP),127.0.0.1", "--metrics-port", "9403",
        "--publish-service", f"{NAMESPACE}/certctl-dataplane",
        "--namespace", "default",
    ]
    assert [env["name"] for env in container["env"]] == ["POD_NAME", "POD_NAMESPACE", "POD_IP"]
    assert [env["valueFrom"]["fieldRef"]["fieldPath"] for env in container["env"]] == [
        "metadata.name", "metadata.namespace", "status.podIP",
    ]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8080, "https": 8443, "metrics": 9403}
    _probes_the_admin_address(container)


def test_data_plane_exits_within_its_termination_grace_period(rendered):
    """SIGTERM: not ready for --shutdown-delay, then a drain of up to --drain-timeout; kubelet
    kills the pod after terminationGracePeriodSeconds, which must come later."""
    from certctl import cli

    deployment = _one(rendered, "Deployment", "certctl-dataplane")
    (container,) = _containers(deployment)
    args = cli._parser().parse_args(container["args"])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert args.shutdown_delay + args.drain_timeout + 2 <= grace, (args, grace)


def test_data_plane_reads_only_its_own_service_in_the_certctl_namespace(rendered):
    """--publish-service names the Service the base creates, which a Role lets the data
    plane's account get, list and watch by name, and nothing else of namespace certctl."""
    (container,) = _containers(_one(rendered, "Deployment", "certctl-dataplane"))
    args = container["args"]
    namespace, name = args[args.index("--publish-service") + 1].split("/")
    service = _one(rendered, "Service", name)
    assert service["metadata"]["namespace"] == namespace == NAMESPACE
    role = _one(rendered, "Role", "certctl-dataplane-publish-service")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert _rules(role) == [{"apiGroups": [""], "resources": ["services"],
                             "resourceNames": [name], "verbs": ["get", "list", "watch"]}]
    binding = _one(rendered, "RoleBinding", role["metadata"]["name"])
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "certctl-dataplane",
                                    "namespace": NAMESPACE}]


def test_pods_run_unprivileged_on_a_read_only_root(rendered):
    for deployment in _by_kind(rendered, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()


def test_service_publishes_80_and_443_to_the_data_plane_only(rendered):
    service = _one(rendered, "Service", "certctl-dataplane")
    assert service["spec"]["type"] == "LoadBalancer"
    assert sorted((p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]) == [
        ("http", 80, "http"), ("https", 443, "https"),
    ]
    selector = service["spec"]["selector"].items()
    for deployment in _by_kind(rendered, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"].items()
        assert (selector <= labels) == (deployment["metadata"]["name"] == "certctl-dataplane")


def test_flags_name_the_objects_the_base_creates(rendered):
    (controller,) = _containers(_one(rendered, "Deployment", "certctl-controller"))
    solver_service = controller["args"][controller["args"].index("--solver-service") + 1]
    service = _one(rendered, "Service", "certctl-dataplane")
    assert solver_service == f"{service['metadata']['namespace']}/{service['metadata']['name']}"

    (dataplane,) = _containers(_one(rendered, "Deployment", "certctl-dataplane"))
    ingress_class = _one(rendered, "IngressClass",
                         dataplane["args"][dataplane["args"].index("--ingress-class") + 1])
    assert ingress_class["spec"]["controller"] == dataplane_feed.CONTROLLER_NAME
    annotation = ingress_class["metadata"]["annotations"]
    assert annotation["ingressclass.kubernetes.io/is-default-class"] == "false"


# --- (b) built-in objects against the official Kubernetes schemas ---------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_objects_match_the_kubernetes_openapi_schemas(rendered, version, monkeypatch):
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("schema validation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    builtins = rendered + [doc for _, doc in _example_objects() if doc["kind"] not in OUR_KINDS]
    for obj in builtins:
        kubernetes_validate.validate(obj, version, strict=True)

    mistyped = copy.deepcopy(_one(rendered, "Deployment", "certctl-dataplane"))
    _containers(mistyped)[0]["readinessProbe"]["httpGet"]["prot"] = "metrics"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(mistyped, version, strict=True)


# --- (c) the CRDs: structural, named as certctl expects, and enforcing what the parser does ---


_CEL = celpy.Environment()
_NOT_STRUCTURAL = {"$ref", "definitions", "dependencies", "additionalItems", "patternProperties",
                   "id", "$schema", "allOf", "anyOf", "oneOf", "not"}
_TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def _structural_problems(node: Mapping[str, Any], *, at: str) -> Iterator[str]:
    """Kubernetes' structural schema rules, plus the v1 CRD restrictions."""
    if "type" in node:
        if node["type"] not in _TYPES:
            yield f"{at}: unknown type {node['type']!r}"
    elif not (node.get("x-kubernetes-preserve-unknown-fields") is True
              or node.get("x-kubernetes-int-or-string") is True):
        yield f"{at}: no type"
    for key in sorted(_NOT_STRUCTURAL & node.keys()):
        yield f"{at}: {key} is not allowed"
    if node.get("uniqueItems") is True:
        yield f"{at}: uniqueItems must not be true"
    if "properties" in node and "additionalProperties" in node:
        yield f"{at}: properties and additionalProperties are mutually exclusive"
    if node.get("type") != "object" and {"properties", "additionalProperties",
                                         "required"} & node.keys():
        yield f"{at}: properties on a non-object"
    if node.get("type") == "array" and "items" not in node:
        yield f"{at}: an array needs items"
    for name in node.get("required", []):
        if name not in node.get("properties", {}):
            yield f"{at}: required field {name!r} is not a property"
    if node.get("x-kubernetes-list-type") == "map":
        keys = node.get("x-kubernetes-list-map-keys") or []
        if not keys or not set(keys) <= set(node["items"].get("required", [])):
            yield f"{at}: a map list needs required x-kubernetes-list-map-keys"
    for rule in node.get("x-kubernetes-validations", []):
        if not rule.get("message"):
            yield f"{at}: rule {rule['rule']!r} has no message"
        try:
            _CEL.compile(rule["rule"])
        except celparser.CELParseError as err:
            yield f"{at}: rule {rule['rule']!r} does not compile: {err}"
    for name, child in node.get("properties", {}).items():
        yield from _structural_problems(child, at=f"{at}.{name}")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from _structural_problems(node["additionalProperties"], at=f"{at}.*")
    if "items" in node:
        yield from _structural_problems(node["items"], at=f"{at}[*]")


@pytest.mark.parametrize("kind", sorted(OUR_KINDS))
def test_crd_schema_is_structural(kind):
    schema = _schema(kind)
    assert list(_structural_problems(schema, at=kind)) == []
    # Only name and generateName may be restricted in metadata; we restrict nothing.
    assert schema["properties"]["metadata"] == {"type": "object"}
    assert {"spec", "status"} <= schema["properties"].keys()


def test_structural_check_finds_problems():
    broken = {"type": "object", "properties": {
        "a": {"description": "no type"},
        "b": {"type": "array"},
        "c": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
        "d": {"type": "string", "x-kubernetes-validations": [{"rule": "self ==", "message": "m"}]},
    }}
    assert len(list(_structural_problems(broken, at="x"))) == 4


@pytest.mark.parametrize("kind", sorted(OUR_KINDS))
def test_crd_names_match_what_certctl_reads_and_writes(kind):
    crd = _crds()[kind]
    info = OUR_KINDS[kind]
    assert crd["metadata"]["name"] == f"{info.plural}.certctl.io"
    assert crd["spec"]["group"] == "certctl.io"
    assert crd["spec"]["scope"] == ("Namespaced" if info.namespaced else "Cluster")
    names = crd["spec"]["names"]
    assert (names["plural"], names["singular"], names["listKind"]) == (
        info.plural, kind.lower(), f"{kind}List")
    assert "certctl" in names["categories"]
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    assert version["subresources"] == {"status": {}}


def test_certificates_answer_to_the_short_names_users_type():
    assert _crds()["Certificate"]["spec"]["names"]["shortNames"] == ["cert", "certs"]


def _field_exists(schema: Mapping[str, Any], json_path: str) -> bool:
    """Whether a printer column's path (filters such as [?(@.type=="Ready")] dropped) exists."""
    node = schema
    for part in re.sub(r"\[[^]]*\]", "", json_path).lstrip(".").split("."):
        if part == "metadata":
            return True  # ObjectMeta is the server's, not in our schema
        node = node.get("properties", {}).get(part, {})
        node = node.get("items", node)
    return bool(node)


@pytest.mark.parametrize(("kind", "columns"), [
    ("Certificate", ["Ready", "Secret", "Issuer", "Age", "Expiry"]),
    ("ClusterIssuer", ["Ready", "Age"]),
    ("Issuer", ["Ready", "Age"]),
    ("Order", ["State", "Age"]),
    ("Challenge", ["State", "Domain", "Age"]),
])
def test_printer_columns_show_fields_that_exist(kind, columns):
    printed = _crds()[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in printed if not c.get("priority")] == columns
    for column in printed:
        assert _field_exists(_schema(kind), column["jsonPath"]), column
    expiry = [c for c in printed if c["name"] == "Expiry"]
    # kubectl prints a future `date` as <invalid>; the expiry is shown as the timestamp.
    assert all(c["type"] == "string" and c["jsonPath"] == ".status.notAfter" for c in expiry)


def _without_descriptions(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_without_descriptions(item) for item in node]
    return node


def test_issuer_and_cluster_issuer_accept_the_same_fields():
    assert _without_descriptions(_schema("Issuer")) == _without_descriptions(
        _schema("ClusterIssuer"))


def _undescribed(node: Mapping[str, Any], *, at: str) -> Iterator[str]:
    for name, child in node.get("properties", {}).items():
        if not child.get("description"):
            yield f"{at}.{name}"
        yield from _undescribed(child, at=f"{at}.{name}")
    if "items" in node:
        yield from _undescribed(node["items"], at=f"{at}[*]")


@pytest.mark.parametrize("kind", ["ClusterIssuer", "Issuer", "Certificate"])
def test_user_facing_fields_are_described_for_kubectl_explain(kind):
    spec = _schema(kind)["properties"]["spec"]
    assert list(_undescribed(spec, at="spec")) == []


def test_usages_are_the_ones_the_parser_knows():
    usages = _schema("Certificate")["properties"]["spec"]["properties"]["usages"]
    assert set(usages["items"]["enum"]) == resources.KEY_USAGES | resources.EXTENDED_KEY_USAGES


@pytest.mark.parametrize(("source", "obj"), [
    pytest.param(source, obj, id=source) for source, obj in _example_objects()
    if obj["kind"] in OUR_KINDS
])
def test_examples_are_valid_custom_resources(source, obj):
    assert _violations(obj) == []


def _status_samples() -> list[dict[str, Any]]:
    """Each kind with the spec and status fields certctl's controllers write."""
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    stamp = conditions.format_time(now)
    ready = conditions.set_condition([], type="Ready", status="True", reason="Ready",
                                     message="up to date", now=now, observed_generation=2)
    issuing = conditions.set_condition(ready, type="Issuing", status="False", reason="Failed",
                                       message="retrying", now=now, observed_generation=2)
    pem = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n...\n").decode()
    issuer_ref = {"name": "letsencrypt-staging", "kind": "ClusterIssuer", "group": "certctl.io"}
    issuer = _cluster_example("letsencrypt-staging.yaml")
    issuer["status"] = {"conditions": ready, "acme": {
        "uri": "https://acme.example/acct/1", "lastRegisteredEmail": "admin@example.com"}}
    certificate = _cluster_example("certificate.yaml")
    certificate["status"] = {
        "conditions": issuing, "notBefore": stamp, "notAfter": stamp, "renewalTime": stamp,
        "revision": 3, "failedIssuanceAttempts": 1, "lastFailureTime": stamp,
        "lastFailureGeneration": 2, "lastFailedOrder": "example-com-4-0123456789",
        "nextPrivateKeySecretName": "example-com-next-private-key", "retryAfter": stamp,
    }
    order = {
        "apiVersion": "certctl.io/v1", "kind": "Order",
        "metadata": {"name": "example-com-4-0123456789", "namespace": "default"},
        "spec": {"request": pem, "issuerRef": issuer_ref, "dnsNames": ["example.com"],
                 "ipAddresses": [], "commonName": "example.com"},
        "status": {
            "url": "https://acme.example/order/1", "finalizeURL": "https://acme.example/fin/1",
            "state": "errored", "reason": "rate limited", "failureTime": stamp,
            "retryAfter": stamp,
            "certificate": pem,
            "authorizations": [
                {"url": "https://acme.example/authz/1", "identifier": "example.com",
                 "wildcard": False, "initialState": "pending",
                 "challenges": [{"type": "http-01", "url": "https://acme.example/chall/1",
                                 "token": "tok"}]},
                {"url": "https://acme.example/authz/2"},
            ],
        },
    }
    challenge = {
        "apiVersion": "certctl.io/v1", "kind": "Challenge",
        "metadata": {"name": "example-com-4-0123456789-abcdef0123", "namespace": "default"},
        "spec": {"url": "https://acme.example/chall/1",
                 "authorizationURL": "https://acme.example/authz/1", "dnsName": "example.com",
                 "wildcard": False, "type": "HTTP-01", "token": "tok", "key": "tok.thumbprint",
                 "issuerRef": issuer_ref, "solverIndex": 0,
                 "solver": {"selector": {"dnsNames": ["example.com"]},
                            "http01": {"ingress": {"ingressClassName": "certctl"}}}},
        "status": {"presented": True, "processing": True, "state": "pending",
                   "reason": "Accepted: waiting for the ACME server to validate"},
    }
    return [issuer, certificate, order, challenge]


@pytest.mark.parametrize("obj", _status_samples(), ids=lambda obj: obj["kind"])
def test_what_the_controllers_write_is_accepted(obj):
    assert _violations(obj) == []
    if obj["kind"] in ("ClusterIssuer", "Certificate", "Challenge"):
        _parse(obj)


def _mutate(path: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    obj = copy.deepcopy(_cluster_example(path))
    change(obj["spec"])
    return obj


def _update(**fields: Any) -> Callable[[dict[str, Any]], None]:
    """Set top-level spec fields; None deletes one."""
    def change(spec: dict[str, Any]) -> None:
        for name, value in fields.items():
            if value is None:
                del spec[name]
            else:
                spec[name] = value
    return change


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set a dotted field below spec (`acme.solvers.0.http01`); None deletes it."""
    def change(spec: dict[str, Any]) -> None:
        *parents, last = field.split(".")
        node: Any = spec
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return change


_HTTP01_ISSUER = "letsencrypt-staging.yaml"
_DNS01_ISSUER = "rfc2136.yaml"
_CERTIFICATE = "certificate.yaml"
_SOLVER = "acme.solvers.0"

_REJECTED = [
    # (id, example, change, what the API server would say)
    ("issuer-acme-and-selfSigned", _HTTP01_ISSUER, _update(selfSigned={}),
     "exactly one issuer type must be set: acme, selfSigned or ca"),
    ("issuer-of-no-type", _HTTP01_ISSUER, _update(acme=None),
     "exactly one issuer type must be set: acme, selfSigned or ca"),
    ("issuer-typo", _HTTP01_ISSUER, _set("acme.sever", "https://acme.example/dir"),
     "spec.acme.sever: unknown field; did you mean 'server'?"),
    ("caBundle-and-skipTLSVerify", _HTTP01_ISSUER,
     lambda spec: spec["acme"].update(caBundle="Zm9v", skipTLSVerify=True),
     "caBundle and skipTLSVerify are mutually exclusive; set only one"),
    ("solver-http01-and-dns01", _HTTP01_ISSUER,
     _set(f"{_SOLVER}.dns01", {"rfc2136": {"nameserver": "ns1.example.com"}}),
     "exactly one of http01, dns01 or tlsALPN01 must be set"),
    ("solver-of-no-type", _HTTP01_ISSUER, _set(f"{_SOLVER}.http01", None),
     "exactly one of http01, dns01 or tlsALPN01 must be set"),
    ("http01-class-and-name", _HTTP01_ISSUER, _set(f"{_SOLVER}.http01.ingress.name", "app"),
     "only one of ingressClassName, class or name may be set"),
    ("dns01-two-providers", _DNS01_ISSUER,
     _set(f"{_SOLVER}.dns01.digitalocean", {"tokenSecretRef": {"name": "do-token"}}),
     "exactly one DNS provider must be configured"),
    ("renewBefore-longer-than-duration", _CERTIFICATE,
     _update(duration="1h", renewBefore="2h"),
     "renewBefore must be less than duration (2160h when duration is unset)"),
    ("renewBefore-equal-to-duration", _CERTIFICATE,
     _update(duration="1h", renewBefore="60m"),
     "renewBefore must be less than duration (2160h when duration is unset)"),
    ("renewBefore-longer-than-default-duration", _CERTIFICATE,
     _update(duration=None, renewBefore="2200h"),
     "renewBefore must be less than duration (2160h when duration is unset)"),
    ("renewBefore-and-renewBeforePercentage", _CERTIFICATE, _update(renewBeforePercentage=20),
     "renewBefore and renewBeforePercentage are mutually exclusive; set only one"),
    ("duration-too-short", _CERTIFICATE,
     _update(duration="30m", renewBefore=None),
     "spec.duration: must be at least 1h"),
    ("renewBefore-too-short", _CERTIFICATE, _update(renewBefore="1m"),
     "spec.renewBefore: must be at least 5m"),
    ("duration-in-days", _CERTIFICATE, _update(duration="90d"),
     "spec.duration: '90d' is not a duration: days are not a unit, write 2160h"),
    ("no-names", _CERTIFICATE, _update(dnsNames=[]),
     "at least one of dnsNames, ipAddresses or commonName must be set"),
    ("ecdsa-size", _CERTIFICATE, _set("privateKey.size", 2048),
     "spec.privateKey: size must be 256, 384 or 521 for ECDSA keys"),
    ("rsa-size", _CERTIFICATE, _update(privateKey={"algorithm": "RSA", "size": 1024}),
     "size must be between 2048 and 8192 for RSA keys"),
    ("size-alone-means-rsa", _CERTIFICATE, _update(privateKey={"size": 1024}),
     "size must be between 2048 and 8192 for RSA keys"),
    ("unknown-algorithm", _CERTIFICATE, _set("privateKey.algorithm", "DSA"),
     "spec.privateKey.algorithm: must be one of RSA, ECDSA, Ed25519, got 'DSA'"),
    ("unknown-usage", _CERTIFICATE, _update(usages=["server auth", "web"]),
     "spec.usages[1]: must be one of any, cert sign,"),
    ("percentage-100", _CERTIFICATE,
     _update(renewBefore=None, renewBeforePercentage=100),
     "spec.renewBeforePercentage: must be between 1 and 99, is 100"),
    ("issuerRef-kind", _CERTIFICATE, _set("issuerRef.kind", "Vault"),
     "spec.issuerRef.kind: must be one of Issuer, ClusterIssuer, got 'Vault'"),
    ("revisionHistoryLimit-0", _CERTIFICATE, _update(revisionHistoryLimit=0),
     "spec.revisionHistoryLimit: must be at least 1, is 0"),
    ("server-not-a-url", _HTTP01_ISSUER, _set("acme.server", "acme.example.test/directory"),
     "spec.acme.server: is not an http(s) URL; use the CA's directory URL, such as "
     "https://acme-v02.api.letsencrypt.org/directory"),
    ("email-not-an-address", _HTTP01_ISSUER, _set("acme.email", "admin"),
     "spec.acme.email: is not an email address"),
    ("unsupported-field-set", _CERTIFICATE, _update(isCA=True),
     "spec.isCA: is a cert-manager field certctl does not support; remove it"),
    ("common-name-over-64", _CERTIFICATE, _update(commonName="a" * 65),
     "spec.commonName: must be at most 64 characters; put long names in dnsNames"),
    ("percentage-under-5m", _CERTIFICATE,
     _update(duration="1h", renewBefore=None, renewBeforePercentage=5),
     "renewBeforePercentage of the duration (2160h when unset) must be at least the minimum "
     "renewBefore of 5m"),
    ("reserved-annotation", _CERTIFICATE,
     _update(secretTemplate={"annotations": {"certctl.io/issuer-name": "x"}}),
     "spec.secretTemplate.annotations: cert-manager.io/ and certctl.io/ annotations are "
     "reserved"),
    ("blank-profile", _CERTIFICATE, _update(acme={"profile": "  "}),
     "spec.acme.profile: must not be blank; leave it out to use the issuer's profile"),
]


@pytest.mark.parametrize(("example", "change", "message"),
                         [pytest.param(*case[1:], id=case[0]) for case in _REJECTED])
def test_schema_and_parser_reject_the_same_mistakes(example, change, message):
    obj = _mutate(example, change)
    said = _violations(obj)
    assert any(message in line for line in said), said
    with pytest.raises(errors.InvalidObject):
        _parse(obj)


def test_dns01_plugin_providers_pass_the_schema_and_the_parser_counts_providers():
    plugin = _mutate(_DNS01_ISSUER, _set(f"{_SOLVER}.dns01", {"example": {"apiURL": "x"}}))
    assert _violations(plugin) == []
    parsed = _parse(plugin)
    assert isinstance(parsed, resources.Issuer) and isinstance(parsed.spec, resources.AcmeIssuer)
    assert parsed.spec.solvers[0].config == resources.Dns01ProviderSolver(
        provider="example", config=(("apiURL", "x"),))

    # CEL cannot see plugin keys, so "no provider at all" is certctl's to refuse.
    empty = _mutate(_DNS01_ISSUER, _set(f"{_SOLVER}.dns01", {}))
    with pytest.raises(errors.InvalidObject, match="exactly one DNS provider must be configured"):
        _parse(empty)


# --- (d) the cluster examples are what certctl reads ------------------------------------


def test_cluster_examples_parse_and_fit_together(rendered):
    parsed = {obj["metadata"]["name"]: _parse(obj)
              for obj in (_cluster_example(path.name)
                          for path in sorted(CLUSTER_EXAMPLES.glob("*.yaml")))}
    issuers = {name: p for name, p in parsed.items() if isinstance(p, resources.Issuer)}
    acme = {name: p.spec for name, p in issuers.items()
            if isinstance(p.spec, resources.AcmeIssuer)}
    assert any(isinstance(i.spec, resources.SelfSignedIssuer) for i in issuers.values())
    configs = [s.config for a in acme.values() for s in a.solvers]
    http01 = [c for c in configs if isinstance(c, resources.Http01IngressSolver)]
    assert http01 and all(h.ingress_class_name == "certctl" for h in http01)
    assert {c.provider for c in configs
            if isinstance(c, resources.Dns01ProviderSolver)} >= {"rfc2136"}

    (certificate,) = [p for p in parsed.values() if isinstance(p, resources.Certificate)]
    assert certificate.issuer_ref.name in issuers
    (ingress,) = [p for p in parsed.values() if isinstance(p, resources.Ingress)]
    named = [ingress.annotation(key) for key in ("certctl.io/cluster-issuer",
                                                 "cert-manager.io/cluster-issuer")]
    assert any(name in issuers for name in named)
    assert ingress.tls and all(tls.secret_name for tls in ingress.tls)
    # The class the examples use is the one the base installs.
    assert _one(rendered, "IngressClass", ingress.ingress_class_name or "")


# --- (e) RBAC: least privilege ---------------------------------------------------------


def _rules(role: Mapping[str, Any]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = role.get("rules") or []
    return rules


def _flatten(role: Mapping[str, Any]) -> set[Rule]:
    return {(group, resource, verb)
            for rule in _rules(role)
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]}


def test_no_rule_uses_wildcards(rendered):
    roles = _by_kind(rendered, "ClusterRole") + _by_kind(rendered, "Role")
    assert roles
    for role in roles:
        for rule in _rules(role):
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert not any("*" in item for item in rule.get(key, [])), (role, rule)
            assert "nonResourceURLs" not in rule


def test_cluster_roles_grant_exactly_what_each_component_uses(rendered):
    granted = {role["metadata"]["name"]: _flatten(role)
               for role in _by_kind(rendered, "ClusterRole")}
    assert granted == CLUSTER_ROLE_GRANTS
    for role in _by_kind(rendered, "ClusterRole"):
        assert not any("resourceNames" in rule for rule in _rules(role))


def _cluster_wide(rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ClusterRoles some ClusterRoleBinding grants in every namespace."""
    bound = {b["roleRef"]["name"] for b in _by_kind(rendered, "ClusterRoleBinding")}
    return [r for r in _by_kind(rendered, "ClusterRole") if r["metadata"]["name"] in bound]


def test_nothing_but_certctl_io_is_writable_cluster_wide(rendered):
    cluster_wide = _cluster_wide(rendered)
    assert {r["metadata"]["name"] for r in cluster_wide} == {"certctl-controller",
                                                            "certctl-dataplane"}
    for role in cluster_wide:
        # Beside ours, only the status of the cluster-scoped GatewayClass (the Gateway API
        # asks its implementation to set Accepted there).
        writes = {(g, r, v) for g, r, v in _flatten(role) if v in WRITE}
        assert {(g, r) for g, r, _ in writes if g != "certctl.io"} <= {
            ("gateway.networking.k8s.io", "gatewayclasses/status")}, (role["metadata"]["name"],
                                                                      writes)
        # Not even reading a Secret, or any namespaced kind but ours, in every namespace.
        others = {(g, r) for g, r, _ in _flatten(role) if g != "certctl.io"}
        assert others <= {("networking.k8s.io", "ingressclasses"),  # cluster-scoped
                          ("", "namespaces"),  # read for their labels only
                          ("gateway.networking.k8s.io", "gatewayclasses"),
                          ("gateway.networking.k8s.io", "gatewayclasses/status")}, others


def test_secrets_only_through_role_bindings_in_the_watched_namespaces(rendered):
    verbs = {"certctl-controller": set(READ_WRITE), "certctl-dataplane": set(READ)}
    for role in _by_kind(rendered, "Role") + _cluster_wide(rendered):
        assert not any(r == "secrets" for _, r, _ in _flatten(role)), role["metadata"]["name"]
    bindings = _by_kind(rendered, "RoleBinding")
    granting = {}
    for role in _by_kind(rendered, "ClusterRole"):
        secret_verbs = {v for g, r, v in _flatten(role) if (g, r) == ("", "secrets")}
        if secret_verbs:
            granting[role["metadata"]["name"]] = secret_verbs
    assert granting == {f"{component}-namespaced": verbs[component] for component in verbs}
    for component, namespaces in WATCHED_NAMESPACES.items():
        where = sorted(b["metadata"]["namespace"] for b in bindings
                       if b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                           "kind": "ClusterRole",
                                           "name": f"{component}-namespaced"})
        assert where == sorted(namespaces), component
        for binding in bindings:
            if binding["roleRef"]["name"] == f"{component}-namespaced":
                assert binding["subjects"] == [{"kind": "ServiceAccount", "name": component,
                                                "namespace": NAMESPACE}]


def test_components_watch_exactly_the_namespaces_they_have_rights_in(rendered):
    for component, namespaces in WATCHED_NAMESPACES.items():
        (container,) = _containers(_one(rendered, "Deployment", component))
        args = container["args"]
        flagged = [args[i + 1] for i, arg in enumerate(args) if arg == "--namespace"]
        assert flagged == namespaces, component
    # The controller keeps ClusterIssuer Secrets in a namespace it watches.
    (controller,) = _containers(_one(rendered, "Deployment", "certctl-controller"))
    args = controller["args"]
    assert args[args.index("--cluster-resource-namespace") + 1] in \
        WATCHED_NAMESPACES["certctl-controller"]


def test_overlay_example_adds_a_watched_namespace_and_nothing_else(rendered):
    result = subprocess.run([_kubectl(), "kustomize", str(CLUSTER_EXAMPLES / "another-namespace")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    overlay = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    added = [obj for obj in overlay if obj not in rendered]
    assert sorted((o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
                  for o in added) == [
        ("Deployment", NAMESPACE, "certctl-controller"),
        ("Deployment", NAMESPACE, "certctl-dataplane"),
        ("RoleBinding", "shop", "certctl-controller"),
        ("RoleBinding", "shop", "certctl-dataplane"),
    ]
    for component in WATCHED_NAMESPACES:
        (container,) = _containers(_one(overlay, "Deployment", component))
        (base,) = _containers(_one(rendered, "Deployment", component))
        assert container["args"] == [*base["args"], "--namespace", "shop"]
        binding = [b for b in _by_kind(overlay, "RoleBinding")
                   if b["metadata"] == {**b["metadata"], "namespace": "shop", "name": component}]
        assert [b["roleRef"]["name"] for b in binding] == [f"{component}-namespaced"]


def test_leases_only_in_a_role_in_the_certctl_namespace(rendered):
    for role in _by_kind(rendered, "ClusterRole"):
        assert not any(r == "leases" for _, r, _ in _flatten(role))
    (role,) = [r for r in _by_kind(rendered, "Role")
               if any(res == "leases" for _, res, _ in _flatten(r))]
    assert role["metadata"]["namespace"] == NAMESPACE
    grants = {(tuple(rule.get("resourceNames", [])), verb)
              for rule in _rules(role) for verb in rule["verbs"]}
    # Creating cannot be limited by name; reading and renewing is limited to our Lease.
    assert grants == {((), "create"), (("certctl-controller",), "get"),
                      (("certctl-controller",), "update")}
    binding = _one(rendered, "RoleBinding", role["metadata"]["name"])
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "certctl-controller",
                                    "namespace": NAMESPACE}]


def test_each_component_is_bound_to_its_own_cluster_role(rendered):
    for deployment in _by_kind(rendered, "Deployment"):
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        assert _one(rendered, "ServiceAccount", account)["metadata"]["namespace"] == NAMESPACE
        bindings = [b for b in _by_kind(rendered, "ClusterRoleBinding")
                    if any(s["name"] == account for s in b["subjects"])]
        assert [(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings] == [
            ("ClusterRole", deployment["metadata"]["name"])]
        assert bindings[0]["subjects"] == [{"kind": "ServiceAccount", "name": account,
                                            "namespace": NAMESPACE}]
