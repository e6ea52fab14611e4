"""The Issuer and ClusterIssuer CRDs are one definition in two scopes.

Kept as two hand-written files that this test holds together, rather than one
generated from the other: both stay plain YAML that `kubectl apply -k crds/` and
the Helm chart read with no build step, an edit is made in the file a reader
opens, and a drift fails here naming the first field where the two part. A
generator would give the same guarantee at the price of a script, and of a second
way to be wrong (output not regenerated), which a test would have to catch anyway.
Only descriptions may differ: they say where the Secrets of each scope live.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from certctl.api import kinds

CRDS = Path(__file__).resolve().parent.parent / "crds"


def crd(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((CRDS / name).read_text())
    assert isinstance(loaded, dict), name
    return loaded


def differences(a: Any, b: Any, *, at: str = "") -> Iterator[str]:
    """The paths where `a` and `b` differ, down to leaves."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            yield from differences(a.get(key), b.get(key), at=f"{at}.{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from differences(x, y, at=f"{at}[{index}]")
    elif a != b:
        yield at


def test_issuer_and_cluster_issuer_crds_differ_only_in_scope_names_and_descriptions() -> None:
    issuer, cluster_issuer = crd("issuers.yaml"), crd("clusterissuers.yaml")

    parted = [path for path in differences(issuer, cluster_issuer)
              if not path.endswith(".description")]

    assert parted == [".metadata.name", ".spec.names.kind", ".spec.names.listKind",
                      ".spec.names.plural", ".spec.names.singular", ".spec.scope"]
    # and a field one file lacks is found, wherever it is
    trimmed = copy.deepcopy(cluster_issuer)
    schema = trimmed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    del schema["properties"]["spec"]["properties"]["acme"]["properties"]["solvers"]
    assert ".spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.acme" \
        ".properties.solvers" in list(differences(issuer, trimmed))


def test_issuer_crds_match_the_kinds_table() -> None:
    for file, kind in (("issuers.yaml", "Issuer"), ("clusterissuers.yaml", "ClusterIssuer")):
        spec = crd(file)["spec"]
        info = kinds.BY_KIND[kind]
        assert spec["names"]["kind"] == kind
        assert spec["names"]["plural"] == info.plural
        assert f"{spec['group']}/{spec['versions'][0]['name']}" == info.api_version
        assert spec["scope"] == ("Namespaced" if info.namespaced else "Cluster")
