"""The Helm chart (charts/certctl), with helm built from its Go module
(scripts/testservers/build.sh, found through tests/testservers.py).

With its defaults the chart renders the objects `kubectl kustomize manifests/` renders,
plus only what is documented here (DOCUMENTED_EXTRAS), and so it passes every offline
check tests/test_manifests.py makes of the kustomize base (reused by import). Its values
change what they should and nothing else; the optional monitoring objects carry
monitoring/ unchanged; and `helm install` creates every object on a real API server
(a control plane of its own: the session's shared one holds the kustomize base's
cluster-wide objects, which a Helm release may not take over).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests import test_manifests as manifest_checks
from tests import testservers

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

# Imported by pytest first, so that its asserts are rewritten (as the cluster tests do).
pytest_plugins = ["tests.controlplane"]

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "certctl"
RELEASE = "certctl"
# What the chart adds to the kustomize base's objects, all of it Helm's bookkeeping:
# the usual Helm labels on every object's metadata (never on selectors or pod
# templates, which stay as the base has them), and on the CRDs the annotation that
# keeps them on `helm uninstall` (crds.keep), since deleting a CRD deletes every
# Certificate with it.
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"}
KEEP = {"helm.sh/resource-policy": "keep"}
DOCUMENTED_EXTRAS = "Helm's labels on metadata; helm.sh/resource-policy: keep on the CRDs"

Object = dict[str, Any]
Key = tuple[str, str | None, str]


@pytest.fixture(scope="module")
def helm_home() -> Iterator[dict[str, str]]:
    """Helm's cache, config and data in a directory of their own, not the user's."""
    with tempfile.TemporaryDirectory(prefix="certctl-helm-") as home:
        yield {**os.environ, "HELM_CACHE_HOME": f"{home}/cache",
               "HELM_CONFIG_HOME": f"{home}/config", "HELM_DATA_HOME": f"{home}/data"}


def _helm(env: dict[str, str], *args: str,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(testservers.binary("helm", "helm")), *args], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def _template(env: dict[str, str], *values: str) -> list[Object]:
    """`helm template` with `--set`s, as the objects it renders."""
    sets = [arg for value in values for arg in ("--set", value)]
    result = _helm(env, "template", RELEASE, str(CHART), *sets)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _key(obj: Object) -> Key:
    return (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])


def _without_helm_extras(obj: Object) -> Object:
    obj = copy.deepcopy(obj)
    metadata = obj["metadata"]
    labels = metadata.get("labels") or {}
    assert labels.keys() >= HELM_LABELS, _key(obj)
    assert labels["app.kubernetes.io/instance"] == RELEASE
    assert labels["app.kubernetes.io/managed-by"] == "Helm"
    for label in HELM_LABELS:
        del labels[label]
    if obj["kind"] == "CustomResourceDefinition":
        assert {k: metadata["annotations"].pop(k) for k in KEEP} == KEEP
        if not metadata["annotations"]:
            del metadata["annotations"]
    return obj


@pytest.fixture(scope="module")
def chart(helm_home: dict[str, str]) -> list[Object]:
    """The chart with its defaults."""
    return _template(helm_home)


@pytest.fixture(scope="module")
def kustomized() -> list[Object]:
    result = subprocess.run([manifest_checks._kubectl(), "kustomize", str(ROOT / "manifests")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(objects: list[Object], kind: str, name: str, namespace: str | None = None) -> Object:
    found = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name
             and (namespace is None or obj["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def _args(objects: list[Object], component: str) -> list[str]:
    deployment = _one(objects, "Deployment", f"certctl-{component}")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    return args


# --- lint and render ----------------------------------------------------------------------


@pytest.mark.parametrize("values", [
    [],
    ["metrics.enabled=true", "serviceMonitor.enabled=true", "prometheusRule.enabled=true",
     "grafanaDashboard.enabled=true"],
], ids=["defaults", "monitoring"])
def test_helm_lint_passes_strictly(helm_home, values):
    sets = [arg for value in values for arg in ("--set", value)]
    result = _helm(helm_home, "lint", "--strict", str(CHART), *sets)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_defaults_render_the_kustomize_base_and_only_documented_extras(chart, kustomized):
    helm = {_key(obj): _without_helm_extras(obj) for obj in chart}
    base = {_key(obj): obj for obj in kustomized}
    assert len(helm) == len(chart)
    assert sorted(helm, key=str) == sorted(base, key=str)
    for key, obj in base.items():
        assert helm[key] == obj, f"{key} differs from manifests/ beyond {DOCUMENTED_EXTRAS}"


# Checks of test_manifests that take the rendered base but check something else; the
# chart's counterpart of the overlay is test_watched_namespaces_render_the_overlay_example.
NOT_OF_THE_BASE = {"test_overlay_example_adds_a_watched_namespace_and_nothing_else"}


def _rendered_checks() -> list[Callable[..., None]]:
    """test_manifests' checks of the rendered base: those taking `rendered` (and at most
    the fixtures `version` and `monkeypatch`)."""
    checks = []
    for name, function in vars(manifest_checks).items():
        if not name.startswith("test_") or not callable(function) or name in NOT_OF_THE_BASE:
            continue
        parameters = set(inspect.signature(function).parameters)
        if "rendered" in parameters and parameters <= {"rendered", "version", "monkeypatch"}:
            checks.append(function)
    return checks


@pytest.mark.parametrize("check", _rendered_checks(), ids=lambda check: check.__name__)
def test_chart_passes_the_checks_of_the_kustomize_base(chart, check, monkeypatch):
    """Each of tests/test_manifests.py's checks of the base, on the chart's objects."""
    parameters = inspect.signature(check).parameters
    versions = manifest_checks.KUBERNETES_VERSIONS if "version" in parameters else (None,)
    for version in versions:
        kwargs: dict[str, Any] = {"rendered": copy.deepcopy(chart)}
        if version is not None:
            kwargs["version"] = version
        if "monkeypatch" in parameters:
            kwargs["monkeypatch"] = monkeypatch
        check(**kwargs)


def test_the_reused_checks_are_the_ones_expected():
    names = {check.__name__ for check in _rendered_checks()}
    assert {"test_base_renders_every_component",
            "test_builtin_objects_match_the_kubernetes_openapi_schemas",
            "test_cluster_roles_grant_exactly_what_each_component_uses",
            "test_secrets_only_through_role_bindings_in_the_watched_namespaces",
            "test_components_watch_exactly_the_namespaces_they_have_rights_in"} <= names


# --- values -----------------------------------------------------------------------------------


def test_values_set_image_replicas_resources_and_extra_args(helm_home, chart):
    objects = _template(
        helm_home, "image.repository=registry.example/certctl", "image.tag=0.2.0",
        "image.pullPolicy=Always", "controller.replicas=3", "dataplane.replicas=5",
        "dataplane.resources.limits.cpu=4", "controller.extraArgs={--backoff-base,30m}",
        "dataplane.extraArgs={--load-balancer-address,203.0.113.7}",
        "dataplane.service.type=NodePort")
    for component, replicas in (("controller", 3), ("dataplane", 5)):
        deployment = _one(objects, "Deployment", f"certctl-{component}")
        assert deployment["spec"]["replicas"] == replicas
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "registry.example/certctl:0.2.0"
        assert container["imagePullPolicy"] == "Always"
    assert _args(objects, "controller")[-2:] == ["--backoff-base", "30m"]
    assert _args(objects, "dataplane")[-2:] == ["--load-balancer-address", "203.0.113.7"]
    (container,) = _one(objects, "Deployment",
                        "certctl-dataplane")["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"cpu": 4, "memory": "1Gi"}
    assert _one(objects, "Service", "certctl-dataplane")["spec"]["type"] == "NodePort"
    # Nothing else moved.
    assert sorted(map(_key, objects), key=str) == sorted(map(_key, chart), key=str)


def test_watched_namespaces_get_bindings_and_flags(helm_home):
    objects = _template(helm_home, "watchNamespaces={default,shop}")
    bindings = sorted((obj["metadata"]["name"], obj["metadata"]["namespace"])
                      for obj in objects if obj["kind"] == "RoleBinding"
                      and obj["roleRef"]["name"].endswith("-namespaced"))
    assert bindings == [("certctl-controller", "certctl"), ("certctl-controller", "default"),
                        ("certctl-controller", "shop"), ("certctl-dataplane", "default"),
                        ("certctl-dataplane", "shop")]

    def flags(component: str) -> list[str]:
        args = _args(objects, component)
        return [args[i + 1] for i, arg in enumerate(args) if arg == "--namespace"]

    assert flags("controller") == ["certctl", "default", "shop"]
    assert flags("dataplane") == ["default", "shop"]


def test_watched_namespaces_render_the_overlay_example(helm_home):
    """examples/cluster/another-namespace (the base watching namespace shop too) is the
    chart with watchNamespaces={default,shop}."""
    result = subprocess.run(
        [manifest_checks._kubectl(), "kustomize",
         str(ROOT / "examples" / "cluster" / "another-namespace")],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    overlay = {_key(obj): obj for obj in yaml.safe_load_all(result.stdout) if obj}
    objects = {_key(obj): _without_helm_extras(obj)
               for obj in _template(helm_home, "watchNamespaces={default,shop}")}
    # The overlay's own RoleBindings miss the base's label (commonLabels is the base's);
    # the chart labels them as every other object.
    for key, obj in objects.items():
        if key[1] == "shop":
            assert obj["metadata"].pop("labels") == {"app.kubernetes.io/part-of": "certctl"}
            assert "labels" not in overlay[key]["metadata"]
    assert objects == overlay


def test_another_namespace_for_certctl_itself(helm_home):
    objects = _template(helm_home, "namespace=tls-system", "ingressClass.name=edge")
    assert _one(objects, "Namespace", "tls-system")
    controller = _args(objects, "controller")
    assert controller[controller.index("--cluster-resource-namespace") + 1] == "tls-system"
    assert controller[controller.index("--solver-service") + 1] == "tls-system/certctl-dataplane"
    dataplane = _args(objects, "dataplane")
    assert dataplane[dataplane.index("--ingress-class") + 1] == "edge"
    assert _one(objects, "IngressClass", "edge")
    for obj in objects:
        for subject in obj.get("subjects", []):
            assert subject["namespace"] == "tls-system"


def test_no_watched_namespace_is_refused(helm_home):
    result = _helm(helm_home, "template", RELEASE, str(CHART), "--set", "watchNamespaces=null",
                   check=False)
    assert result.returncode != 0
    assert "watchNamespaces must name at least one namespace" in result.stderr


def test_optional_objects_can_be_left_out(helm_home):
    objects = _template(helm_home, "createNamespace=false", "crds.enabled=false",
                        "ingressClass.create=false")
    kinds = {obj["kind"] for obj in objects}
    assert not {"Namespace", "CustomResourceDefinition", "IngressClass"} & kinds
    crds = [obj for obj in _template(helm_home, "crds.keep=false")
            if obj["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 5
    assert all("annotations" not in crd["metadata"] for crd in crds)


# --- monitoring ----------------------------------------------------------------------------


def _alert_jobs() -> set[str]:
    rules = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "certctl-alerts.yaml")
                           .read_text(encoding="utf-8"))
    text = json.dumps(rules)
    return {job for job in ("certctl-controller", "certctl-dataplane")
            if f'job=\\"{job}\\"' in text}


def test_monitoring_objects_scrape_both_components_as_the_rules_expect(helm_home, chart):
    objects = _template(helm_home, "serviceMonitor.enabled=true",
                        "serviceMonitor.labels.release=prometheus",
                        "prometheusRule.enabled=true", "grafanaDashboard.enabled=true")
    extra = sorted(set(map(_key, objects)) - set(map(_key, chart)), key=str)
    assert extra == sorted([
        ("Service", "certctl", "certctl-controller-metrics"),
        ("Service", "certctl", "certctl-dataplane-metrics"),
        ("ServiceMonitor", "certctl", "certctl-controller"),
        ("ServiceMonitor", "certctl", "certctl-dataplane"),
        ("PrometheusRule", "certctl", "certctl"),
        ("ConfigMap", "certctl", "certctl-grafana-dashboard"),
    ], key=str)
    jobs = set()
    for component, port in (("controller", 9402), ("dataplane", 9403)):
        deployment = _one(objects, "Deployment", f"certctl-{component}")
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
        args = container["args"]
        assert args[args.index("--metrics-port") + 1] == str(port)
        service = _one(objects, "Service", f"certctl-{component}-metrics")
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert service["spec"]["ports"] == [{"name": "metrics", "port": port,
                                             "targetPort": "metrics", "protocol": "TCP"}]
        monitor = _one(objects, "ServiceMonitor", f"certctl-{component}")
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= \
            service["metadata"]["labels"].items()
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == "metrics"
        assert endpoint["honorLabels"] is True
        (relabel,) = endpoint["relabelings"]
        assert relabel["targetLabel"] == "job"
        jobs.add(relabel["replacement"])
    assert jobs == _alert_jobs()

    rule = _one(objects, "PrometheusRule", "certctl")
    assert rule["spec"] == yaml.safe_load(
        (ROOT / "monitoring" / "prometheus" / "certctl-alerts.yaml").read_text(encoding="utf-8"))
    dashboard = _one(objects, "ConfigMap", "certctl-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["certctl.json"]) == json.loads(
        (ROOT / "monitoring" / "grafana" / "certctl.json").read_text(encoding="utf-8"))

    # The built-in kinds among them are valid for the API server too.
    builtin = [obj for obj in objects if obj["kind"] in {"Service", "Deployment", "ConfigMap"}]
    for version in manifest_checks.KUBERNETES_VERSIONS:
        for obj in builtin:
            kubernetes_validate.validate(obj, version, strict=True)


# --- helm install on a real API server -------------------------------------------------------


@pytest.fixture(scope="module")
def own_control_plane() -> Iterator[ControlPlane]:
    from tests.controlplane import ControlPlane  # here: after pytest imported it

    with tempfile.TemporaryDirectory(prefix="certctl-helm-controlplane-") as directory:
        plane = ControlPlane.start(Path(directory))
        try:
            yield plane
        finally:
            plane.stop()


def test_helm_install_creates_every_object_and_uninstall_keeps_the_crds(
        helm_home, chart, own_control_plane):
    plane = own_control_plane
    kubeconfig = str(plane.kubeconfig)
    # The control plane starts with the CRDs, the namespace and the IngressClass applied
    # by kubectl, as after `kubectl apply -k manifests/`: a Helm release takes such
    # objects over when they carry its name (the way from the kustomize base to Helm).
    for kind, name in (("namespace", "certctl"), ("ingressclass", "certctl"),
                       *(("crd", f"{plural}.certctl.io")
                         for plural in manifest_checks.OUR_PLURALS)):
        plane.kubectl("label", "--overwrite", kind, name, "app.kubernetes.io/managed-by=Helm")
        plane.kubectl("annotate", "--overwrite", kind, name,
                      f"meta.helm.sh/release-name={RELEASE}",
                      "meta.helm.sh/release-namespace=default")

    _helm(helm_home, "install", RELEASE, str(CHART), "--kubeconfig", kubeconfig,
          "--namespace", "default", "--timeout", "2m")
    for obj in chart:
        kind, namespace, name = _key(obj)
        resource = f"{kind.lower()}.{obj['apiVersion'].split('/')[0]}" \
            if "/" in obj["apiVersion"] else kind.lower()
        args = ["get", resource, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        live = json.loads(plane.kubectl(*args).stdout)
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE, _key(obj)
    status = json.loads(_helm(helm_home, "status", RELEASE, "--kubeconfig", kubeconfig,
                              "--namespace", "default", "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"

    _helm(helm_home, "uninstall", RELEASE, "--kubeconfig", kubeconfig, "--namespace",
          "default", "--timeout", "2m")
    gone = plane.kubectl("get", "deployment", "certctl-dataplane", "-n", "certctl",
                         check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    kept = plane.kubectl("get", "crd", "certificates.certctl.io", "-o", "name")
    assert kept.stdout.strip() == "customresourcedefinition.apiextensions.k8s.io/" \
        "certificates.certctl.io"
