import base64
import copy
import datetime
from typing import Any

import pytest
import yaml

from certctl.api import errors, parsing, resources
from certctl.pki import keys, selfsigned

# --- helpers --------------------------------------------------------------------


def _ca_pem() -> bytes:
    key = keys.generate_private_key(resources.PrivateKeySpec(algorithm="ECDSA"))
    now = datetime.datetime.now(datetime.UTC)
    return selfsigned.self_signed_certificate(
        key=key,
        dns_names=[],
        common_name="Test CA",
        not_before=now,
        not_after=now + datetime.timedelta(days=1),
        is_ca=True,
    )


def cluster_issuer(**acme_overrides: Any) -> dict[str, Any]:
    acme: dict[str, Any] = {
        "server": "https://acme.example.test/dir",
        "email": "ops@example.test",
        "privateKeySecretRef": {"name": "acme-account"},
        "solvers": [{"http01": {"ingress": {"ingressClassName": "certctl"}}}],
    }
    acme.update(acme_overrides)
    return {
        "apiVersion": "certctl.io/v1",
        "kind": "ClusterIssuer",
        "metadata": {"name": "letsencrypt"},
        "spec": {"acme": acme},
    }


def certificate(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "secretName": "web-tls",
        "dnsNames": ["web.example.test"],
        "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "web", "namespace": "apps", "generation": 3},
        "spec": spec,
    }


def ingress(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ingressClassName": "certctl",
        "rules": [
            {
                "host": "web.example.test",
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "web", "port": {"number": 80}}},
                        }
                    ]
                },
            }
        ],
        "tls": [{"hosts": ["web.example.test"], "secretName": "web-tls"}],
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": "web",
            "namespace": "apps",
            "uid": "1234",
            "creationTimestamp": "2024-05-01T12:00:00Z",
            "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
        },
        "spec": spec,
    }


def invalid(parse, obj, **kwargs) -> errors.InvalidObject:
    with pytest.raises(errors.InvalidObject) as info:
        parse(obj, **kwargs)
    return info.value


# --- durations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2160h", datetime.timedelta(hours=2160)),
        ("1h30m", datetime.timedelta(hours=1, minutes=30)),
        ("90m", datetime.timedelta(minutes=90)),
        ("45s", datetime.timedelta(seconds=45)),
        ("1.5h", datetime.timedelta(minutes=90)),
        ("2160h0m0s", datetime.timedelta(hours=2160)),
        ("500ms", datetime.timedelta(milliseconds=500)),
        ("0", datetime.timedelta(0)),
        ("-5m", datetime.timedelta(minutes=-5)),
        (".5h", datetime.timedelta(minutes=30)),
    ],
)
def test_parse_duration_accepts_go_durations(text, expected):
    assert parsing.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "h", "10", "1x", "1h 30m", "1..5h", "h1"])
def test_parse_duration_refuses_what_go_refuses(text):
    with pytest.raises(ValueError, match="not a duration"):
        parsing.parse_duration(text)


def test_parse_duration_suggests_hours_for_days():
    with pytest.raises(ValueError, match="write 2160h"):
        parsing.parse_duration("90d")


# --- issuers --------------------------------------------------------------------------


def test_acme_cluster_issuer_is_read():
    issuer = parsing.parse_issuer(cluster_issuer())
    assert issuer.kind == "ClusterIssuer"
    assert issuer.namespace is None
    assert isinstance(issuer.spec, resources.AcmeIssuer)
    assert issuer.spec.server == "https://acme.example.test/dir"
    assert issuer.spec.private_key_secret_ref == resources.SecretKeySelector(name="acme-account")
    assert issuer.spec.solvers[0].config == resources.Http01IngressSolver(
        ingress_class_name="certctl"
    )


def test_cert_manager_issuer_is_read_as_ours_with_namespace():
    obj = cluster_issuer()
    obj["apiVersion"] = "cert-manager.io/v1"
    obj["kind"] = "Issuer"
    obj["metadata"]["namespace"] = "apps"
    issuer = parsing.parse_issuer(obj)
    assert (issuer.kind, issuer.namespace) == ("Issuer", "apps")


def test_issuer_without_namespace_lands_in_default():
    obj = cluster_issuer()
    obj["kind"] = "Issuer"
    assert parsing.parse_issuer(obj).namespace == "default"


def test_unknown_api_version_is_refused_on_api_version():
    obj = cluster_issuer()
    obj["apiVersion"] = "cert-manager.io/v1alpha2"
    error = invalid(parsing.parse_issuer, obj, source="issuers.yaml")
    assert error.field == "apiVersion"
    assert "issuers.yaml: ClusterIssuer letsencrypt: apiVersion:" in str(error)


def test_wrong_kind_is_refused():
    obj = cluster_issuer()
    obj["kind"] = "Certificate"
    assert invalid(parsing.parse_issuer, obj).field == "kind"


def test_missing_name_is_refused():
    obj = cluster_issuer()
    del obj["metadata"]["name"]
    assert invalid(parsing.parse_issuer, obj).field == "metadata.name"


def test_selfsigned_and_ca_issuers():
    self_signed = parsing.parse_issuer({**cluster_issuer(), "spec": {"selfSigned": {}}})
    assert self_signed.spec == resources.SelfSignedIssuer()
    assert not isinstance(self_signed.spec, resources.AcmeIssuer)
    ca = parsing.parse_issuer({**cluster_issuer(), "spec": {"ca": {"secretName": "root-ca"}}})
    assert ca.spec == resources.CaIssuer(secret_name="root-ca")


def test_issuer_needs_exactly_one_type():
    none = invalid(parsing.parse_issuer, {**cluster_issuer(), "spec": {}})
    assert none.field == "spec"
    both = cluster_issuer()
    both["spec"]["selfSigned"] = {}
    error = invalid(parsing.parse_issuer, both)
    assert error.field == "spec"
    assert "exactly one issuer type must be set" in error.message


def test_typo_in_spec_is_an_unknown_field_with_suggestion():
    obj = cluster_issuer()
    obj["spec"]["acme"]["sever"] = obj["spec"]["acme"].pop("server")
    error = invalid(parsing.parse_issuer, obj)
    assert error.field == "spec.acme.sever"
    assert "did you mean 'server'" in error.message


def test_unsupported_cert_manager_issuer_type_is_refused():
    obj = {**cluster_issuer(), "spec": {"vault": {"server": "https://vault"}}}
    error = invalid(parsing.parse_issuer, obj)
    assert error.field == "spec.vault"
    assert "does not support" in error.message


def test_acme_server_is_required_and_must_be_a_url():
    obj = cluster_issuer()
    del obj["spec"]["acme"]["server"]
    assert invalid(parsing.parse_issuer, obj).field == "spec.acme.server"
    error = invalid(parsing.parse_issuer, cluster_issuer(server="acme.example.test"))
    assert error.field == "spec.acme.server"
    assert "http(s) URL" in error.message


def test_private_key_secret_name_is_required():
    error = invalid(parsing.parse_issuer, cluster_issuer(privateKeySecretRef={"key": "tls.key"}))
    assert error.field == "spec.acme.privateKeySecretRef.name"


def test_ca_bundle_is_decoded_to_pem():
    pem = _ca_pem()
    issuer = parsing.parse_issuer(cluster_issuer(caBundle=base64.b64encode(pem).decode()))
    assert isinstance(issuer.spec, resources.AcmeIssuer)
    assert issuer.spec.ca_bundle == pem


def test_an_issuer_is_parsed_once_per_resource_version(monkeypatch):
    """Every reconciler pass parses its issuer; one stored content (uid, resourceVersion)
    is parsed once, a new version anew, an object without a version every time."""
    parsed = []
    parse = parsing._parse_issuer

    def counting(obj: Any, **kwargs: Any) -> Any:
        parsed.append(obj)
        return parse(obj, **kwargs)

    monkeypatch.setattr(parsing, "_parse_issuer", counting)

    def server(obj: dict[str, Any]) -> str:
        spec = parsing.parse_issuer(obj).spec
        assert isinstance(spec, resources.AcmeIssuer)
        return spec.server

    pem = _ca_pem()
    stored = cluster_issuer(caBundle=base64.b64encode(pem).decode())
    stored["metadata"].update(uid="7d3c", resourceVersion="41")
    first = parsing.parse_issuer(stored)
    assert parsing.parse_issuer(copy.deepcopy(stored)) is first
    assert len(parsed) == 1
    edited = copy.deepcopy(stored)
    edited["spec"]["acme"]["server"] = "https://acme.example.test/v2/directory"
    edited["metadata"]["resourceVersion"] = "42"
    assert server(edited) == "https://acme.example.test/v2/directory"
    replaced = copy.deepcopy(stored)
    replaced["metadata"]["uid"] = "9e1f"  # deleted and created again, same version number
    assert parsing.parse_issuer(replaced) is not first
    assert len(parsed) == 3
    unversioned = cluster_issuer()
    parsing.parse_issuer(unversioned)
    unversioned["spec"]["acme"]["server"] = "https://other.example.test/directory"
    assert server(unversioned) == "https://other.example.test/directory"
    assert len(parsed) == 5


@pytest.mark.parametrize(
    ("bundle", "problem"),
    [
        ("not base64!!", "not valid base64"),
        (base64.b64encode(b"hello").decode(), "does not decode to PEM"),
        (
            base64.b64encode(
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ).decode(),
            "not a CERTIFICATE",
        ),
        (
            base64.b64encode(
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            ).decode(),
            "does not parse",
        ),
    ],
)
def test_bad_ca_bundle_is_refused(bundle, problem):
    error = invalid(parsing.parse_issuer, cluster_issuer(caBundle=bundle))
    assert error.field == "spec.acme.caBundle"
    assert problem in error.message


def test_ca_bundle_and_skip_tls_verify_are_exclusive():
    bundle = base64.b64encode(_ca_pem()).decode()
    error = invalid(parsing.parse_issuer, cluster_issuer(caBundle=bundle, skipTLSVerify=True))
    assert "mutually exclusive" in error.message


def test_solver_selector_names_are_normalised_and_validated():
    solvers: list[dict[str, Any]] = [
        {
            "selector": {
                "dnsNames": ["*.Example.test"],
                "dnsZones": ["Example.test"],
                "matchLabels": {"team": "web"},
            },
            "dns01": {"rfc2136": {"nameserver": "127.0.0.1:53", "tsigKeyName": "k"}},
        }
    ]
    issuer = parsing.parse_issuer(cluster_issuer(solvers=solvers))
    assert isinstance(issuer.spec, resources.AcmeIssuer)
    solver = issuer.spec.solvers[0]
    assert solver.selector == resources.SolverSelector(
        dns_names=("*.example.test",), dns_zones=("example.test",), match_labels=(("team", "web"),)
    )
    assert isinstance(solver.config, resources.Dns01ProviderSolver)
    assert solver.config.provider == "rfc2136"
    assert dict(solver.config.config) == {"nameserver": "127.0.0.1:53", "tsigKeyName": "k"}

    bad = copy.deepcopy(solvers)
    bad[0]["selector"]["dnsZones"] = ["*.example.test"]
    error = invalid(parsing.parse_issuer, cluster_issuer(solvers=bad))
    assert error.field == "spec.acme.solvers[0].selector.dnsZones[0]"


def test_dns01_needs_exactly_one_provider():
    two: list[dict[str, Any]] = [{"dns01": {"rfc2136": {"nameserver": "127.0.0.1:53"},
                                            "cloudflare": {}}}]
    error = invalid(parsing.parse_issuer, cluster_issuer(solvers=two))
    assert error.field == "spec.acme.solvers[0].dns01"
    assert "exactly one DNS provider must be configured" in error.message
    # a plugin's key is a provider too, which only the parser can count
    plugin: list[dict[str, Any]] = [{"dns01": {"rfc2136": {"nameserver": "127.0.0.1:53"},
                                               "example": {}}}]
    error = invalid(parsing.parse_issuer, cluster_issuer(solvers=plugin))
    assert error.field == "spec.acme.solvers[0].dns01"
    assert "rfc2136, example" in error.message


def test_dns01_cname_strategy_is_accepted_and_checked():
    rfc2136 = {"nameserver": "127.0.0.1:53"}
    follow: list[dict[str, Any]] = [{"dns01": {"cnameStrategy": "Follow", "rfc2136": rfc2136}}]
    [solver] = parsing.parse_issuer(cluster_issuer(solvers=follow)).spec.solvers  # type: ignore[union-attr]
    assert solver.config == resources.Dns01ProviderSolver(
        provider="rfc2136", config=(("nameserver", "127.0.0.1:53"),))

    bogus: list[dict[str, Any]] = [{"dns01": {"cnameStrategy": "Sometimes", "rfc2136": rfc2136}}]
    error = invalid(parsing.parse_issuer, cluster_issuer(solvers=bogus))
    assert error.field == "spec.acme.solvers[0].dns01.cnameStrategy"
    assert "None, Follow" in error.message


def test_solver_needs_exactly_one_type():
    error = invalid(parsing.parse_issuer, cluster_issuer(solvers=[{"selector": {}}]))
    assert error.field == "spec.acme.solvers[0]"


def test_http01_ingress_fields_for_solver_pods_are_ignored():
    solvers = [
        {"http01": {"ingress": {"class": "nginx", "serviceType": "NodePort", "podTemplate": {}}}}
    ]
    issuer = parsing.parse_issuer(cluster_issuer(solvers=solvers))
    assert isinstance(issuer.spec, resources.AcmeIssuer)
    assert issuer.spec.solvers[0].config == resources.Http01IngressSolver(ingress_class="nginx")


def test_http01_ingress_allows_one_of_class_fields():
    solvers = [{"http01": {"ingress": {"class": "nginx", "name": "web"}}}]
    error = invalid(parsing.parse_issuer, cluster_issuer(solvers=solvers))
    assert error.field == "spec.acme.solvers[0].http01.ingress"


def test_external_account_binding_is_read():
    eab = {
        "keyID": "kid-1",
        "keySecretRef": {"name": "eab", "key": "secret"},
        "keyAlgorithm": "HS256",
    }
    issuer = parsing.parse_issuer(cluster_issuer(externalAccountBinding=eab))
    assert isinstance(issuer.spec, resources.AcmeIssuer)
    assert issuer.spec.external_account_binding == resources.ExternalAccountBinding(
        key_id="kid-1", key_secret_ref=resources.SecretKeySelector(name="eab", key="secret")
    )


def test_wrong_type_names_the_field():
    error = invalid(parsing.parse_issuer, cluster_issuer(skipTLSVerify="yes"))
    assert error.field == "spec.acme.skipTLSVerify"
    assert "true or false" in error.message


def test_issuer_from_yaml_document():
    doc = """
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata:
  name: pebble
spec:
  acme:
    server: https://127.0.0.1:14000/dir
    privateKeySecretRef:
      name: pebble-account
    solvers:
    - http01:
        ingress:
          ingressClassName: certctl
"""
    issuer = parsing.parse_issuer(yaml.safe_load(doc))
    assert issuer.name == "pebble"
    assert isinstance(issuer.spec, resources.AcmeIssuer)
    assert issuer.spec.server == "https://127.0.0.1:14000/dir"


# --- certificates -------------------------------------------------------------------------


def test_certificate_is_read_with_defaults():
    cert = parsing.parse_certificate(certificate())
    assert cert.namespace == "apps"
    assert cert.generation == 3
    assert cert.issuer_ref == resources.IssuerRef(
        name="letsencrypt", kind="ClusterIssuer", group="certctl.io"
    )
    assert cert.private_key == resources.PrivateKeySpec()
    assert cert.usages == ("digital signature", "key encipherment")
    assert cert.duration is None


def test_certificate_full_spec():
    cert = parsing.parse_certificate(
        certificate(
            dnsNames=["Web.Example.test", "web.example.test", "*.example.test"],
            ipAddresses=["2001:DB8:0:0::1", "10.0.0.1"],
            commonName="web.example.test",
            duration="2160h",
            renewBefore="360h",
            privateKey={
                "algorithm": "RSA",
                "size": 4096,
                "encoding": "PKCS8",
                "rotationPolicy": "Never",
            },
            usages=["server auth", "digital signature"],
            secretTemplate={"labels": {"app": "web"}, "annotations": {"team": "a"}},
            revisionHistoryLimit=2,
            issuerRef={"name": "ca", "kind": "Issuer", "group": "cert-manager.io"},
        )
    )
    assert cert.dns_names == ("web.example.test", "*.example.test")
    assert cert.ip_addresses == ("2001:db8::1", "10.0.0.1")
    assert cert.duration == datetime.timedelta(hours=2160)
    assert cert.renew_before == datetime.timedelta(hours=360)
    assert cert.private_key == resources.PrivateKeySpec(
        algorithm="RSA", size=4096, encoding="PKCS8", rotation_policy="Never"
    )
    assert cert.usages == ("server auth", "digital signature")
    assert cert.secret_template.labels == (("app", "web"),)
    assert cert.revision_history_limit == 2
    assert cert.issuer_ref == resources.IssuerRef(name="ca", kind="Issuer", group="certctl.io")


def test_secret_name_is_required():
    spec = certificate()
    del spec["spec"]["secretName"]
    assert invalid(parsing.parse_certificate, spec).field == "spec.secretName"


def test_certificate_needs_a_name_to_certify():
    error = invalid(parsing.parse_certificate, certificate(dnsNames=[]))
    assert error.field == "spec"
    assert "dnsNames" in error.message


def test_bad_dns_name_error_names_the_index():
    error = invalid(
        parsing.parse_certificate, certificate(dnsNames=["ok.example", "bad_name.example"])
    )
    assert error.field == "spec.dnsNames[1]"


def test_bad_ip_address_is_refused():
    assert (
        invalid(parsing.parse_certificate, certificate(ipAddresses=["300.1.1.1"])).field
        == "spec.ipAddresses[0]"
    )


def test_common_name_over_64_characters_is_refused():
    error = invalid(parsing.parse_certificate, certificate(commonName="a" * 65))
    assert error.field == "spec.commonName"


def test_duration_under_one_hour_is_refused():
    error = invalid(parsing.parse_certificate, certificate(duration="59m"))
    assert error.field == "spec.duration"
    assert "at least 1h" in error.message


def test_unparseable_duration_names_the_field():
    error = invalid(parsing.parse_certificate, certificate(renewBefore="two weeks"))
    assert error.field == "spec.renewBefore"


def test_renew_before_must_be_shorter_than_duration():
    error = invalid(parsing.parse_certificate, certificate(duration="24h", renewBefore="24h"))
    assert error.field == "spec"
    assert "renewBefore must be less than duration" in error.message


def test_renew_before_is_checked_against_default_duration():
    error = invalid(parsing.parse_certificate, certificate(renewBefore="2200h"))
    assert "2160h" in error.message


def test_renew_before_and_percentage_are_exclusive():
    error = invalid(
        parsing.parse_certificate, certificate(renewBefore="1h", renewBeforePercentage=20)
    )
    assert error.field == "spec"
    assert "renewBefore and renewBeforePercentage are mutually exclusive" in error.message


@pytest.mark.parametrize("percentage", [0, 100])
def test_renew_before_percentage_range(percentage):
    error = invalid(parsing.parse_certificate, certificate(renewBeforePercentage=percentage))
    assert error.field == "spec.renewBeforePercentage"


def test_private_key_size_must_fit_algorithm():
    ecdsa = invalid(
        parsing.parse_certificate, certificate(privateKey={"algorithm": "ECDSA", "size": 2048})
    )
    assert ecdsa.field == "spec.privateKey"
    assert "size must be 256, 384 or 521 for ECDSA keys" in ecdsa.message
    rsa = invalid(
        parsing.parse_certificate, certificate(privateKey={"algorithm": "RSA", "size": 1024})
    )
    assert rsa.field == "spec.privateKey"
    assert "size must be between 2048 and 8192 for RSA keys" in rsa.message


def test_private_key_algorithm_must_be_known():
    error = invalid(parsing.parse_certificate, certificate(privateKey={"algorithm": "DSA"}))
    assert error.field == "spec.privateKey.algorithm"
    assert "RSA, ECDSA, Ed25519" in error.message


def test_unknown_usage_is_refused():
    assert (
        invalid(parsing.parse_certificate, certificate(usages=["server auth", "serverauth"])).field
        == "spec.usages[1]"
    )


def test_issuer_ref_of_external_group_is_refused():
    error = invalid(
        parsing.parse_certificate,
        certificate(
            issuerRef={"name": "pca", "kind": "AWSPCAIssuer", "group": "awspca.cert-manager.io"}
        ),
    )
    assert error.field == "spec.issuerRef.group"


def test_issuer_ref_kind_must_be_ours():
    error = invalid(
        parsing.parse_certificate, certificate(issuerRef={"name": "x", "kind": "VaultIssuer"})
    )
    assert error.field == "spec.issuerRef.kind"


def test_issuer_ref_kind_defaults_to_issuer():
    cert = parsing.parse_certificate(certificate(issuerRef={"name": "local"}))
    assert cert.issuer_ref.kind == "Issuer"


def test_unsupported_certificate_fields_are_refused_only_when_set():
    assert parsing.parse_certificate(certificate(isCA=False, subject={})).name == "web"
    error = invalid(parsing.parse_certificate, certificate(isCA=True))
    assert error.field == "spec.isCA"


def test_reserved_secret_template_annotations_are_refused():
    template = {"annotations": {"cert-manager.io/issuer-name": "x"}}
    assert (
        invalid(parsing.parse_certificate, certificate(secretTemplate=template)).field
        == "spec.secretTemplate.annotations"
    )


def test_revision_history_limit_must_be_positive():
    assert (
        invalid(parsing.parse_certificate, certificate(revisionHistoryLimit=0)).field
        == "spec.revisionHistoryLimit"
    )


def test_invalid_secret_name_is_refused():
    assert (
        invalid(parsing.parse_certificate, certificate(secretName="Web_TLS")).field
        == "spec.secretName"
    )


# --- ingress ------------------------------------------------------------------------------


def test_ingress_is_read():
    ing = parsing.parse_ingress(ingress())
    assert ing.key == resources.ObjectKey(kind="Ingress", namespace="apps", name="web")
    assert ing.uid == "1234"
    assert ing.creation_timestamp == datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)
    assert ing.ingress_class_name == "certctl"
    assert ing.annotation("cert-manager.io/cluster-issuer") == "letsencrypt"
    assert ing.rules[0].paths[0] == resources.IngressPath(
        path="/", path_type="Prefix", backend=resources.ServiceBackend(name="web", port_number=80)
    )
    assert ing.tls == (resources.IngressTLS(hosts=("web.example.test",), secret_name="web-tls"),)


def test_ingress_class_falls_back_to_legacy_annotation():
    obj = ingress()
    del obj["spec"]["ingressClassName"]
    obj["metadata"]["annotations"]["kubernetes.io/ingress.class"] = "nginx"
    assert parsing.parse_ingress(obj).ingress_class_name == "nginx"


def test_ingress_hosts_are_normalised_and_wildcards_allowed():
    obj = ingress(rules=[{"host": "*.Bücher.example"}], tls=[{"hosts": ["WEB.example.test"]}])
    ing = parsing.parse_ingress(obj)
    assert ing.rules[0].host == "*.xn--bcher-kva.example"
    assert ing.rules[0].paths == ()
    assert ing.tls[0].hosts == ("web.example.test",)
    assert ing.tls[0].secret_name is None


def test_ingress_rule_without_host_applies_to_all_hosts():
    ing = parsing.parse_ingress(ingress(rules=[{"http": {"paths": []}}]))
    assert ing.rules[0].host is None


def test_bad_tls_host_error_names_the_path():
    error = invalid(
        parsing.parse_ingress, ingress(tls=[{"hosts": ["ok.example", "foo.*.example"]}])
    )
    assert error.field == "spec.tls[0].hosts[1]"


def test_tls_secret_name_must_be_a_valid_name():
    error = invalid(parsing.parse_ingress, ingress(tls=[{"secretName": "Bad Name"}]))
    assert error.field == "spec.tls[0].secretName"


def _path(**fields: Any) -> dict[str, Any]:
    return ingress(rules=[{"host": "a.example", "http": {"paths": [fields]}}])


def test_path_type_is_required():
    error = invalid(
        parsing.parse_ingress,
        _path(path="/", backend={"service": {"name": "s", "port": {"number": 80}}}),
    )
    assert error.field == "spec.rules[0].http.paths[0].pathType"


def test_prefix_path_must_be_absolute():
    obj = _path(
        path="api", pathType="Prefix", backend={"service": {"name": "s", "port": {"number": 80}}}
    )
    error = invalid(parsing.parse_ingress, obj)
    assert error.field == "spec.rules[0].http.paths[0].path"


def test_implementation_specific_path_defaults_to_root():
    obj = _path(
        pathType="ImplementationSpecific",
        backend={"service": {"name": "s", "port": {"name": "http"}}},
    )
    path = parsing.parse_ingress(obj).rules[0].paths[0]
    assert path.path == "/"
    assert path.backend == resources.ServiceBackend(name="s", port_name="http")


@pytest.mark.parametrize("port", [{}, {"number": 80, "name": "http"}])
def test_backend_port_needs_exactly_one_of_number_or_name(port):
    obj = _path(path="/", pathType="Exact", backend={"service": {"name": "s", "port": port}})
    assert (
        invalid(parsing.parse_ingress, obj).field
        == "spec.rules[0].http.paths[0].backend.service.port"
    )


def test_resource_backends_are_refused():
    obj = ingress(defaultBackend={"resource": {"kind": "Bucket", "name": "b"}})
    assert invalid(parsing.parse_ingress, obj).field == "spec.defaultBackend.resource"


def test_default_backend_is_read():
    ing = parsing.parse_ingress(
        ingress(defaultBackend={"service": {"name": "fallback", "port": {"number": 8080}}})
    )
    assert ing.default_backend == resources.ServiceBackend(name="fallback", port_number=8080)


def test_annotation_values_must_be_strings():
    obj = ingress()
    obj["metadata"]["annotations"]["kubernetes.io/tls-acme"] = True
    error = invalid(parsing.parse_ingress, obj)
    assert error.field == "metadata.annotations.kubernetes.io/tls-acme"
    assert "quote" in error.message


def test_creation_timestamp_from_yaml_datetime_is_utc():
    obj = yaml.safe_load("metadata: {creationTimestamp: 2024-05-01T12:00:00Z}")
    full = ingress()
    full["metadata"]["creationTimestamp"] = obj["metadata"]["creationTimestamp"]
    ing = parsing.parse_ingress(full)
    assert ing.creation_timestamp == datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)


def test_bad_creation_timestamp_is_refused():
    obj = ingress()
    obj["metadata"]["creationTimestamp"] = "yesterday"
    assert invalid(parsing.parse_ingress, obj).field == "metadata.creationTimestamp"


def test_ingress_error_message_names_object_and_field():
    obj = ingress(tls=[{"hosts": ["bad_host"]}])
    message = str(invalid(parsing.parse_ingress, obj, source="web.yaml"))
    assert message.startswith("web.yaml: Ingress apps/web: spec.tls[0].hosts[0]: ")


# --- ingress classes, services, endpoints ---------------------------------------------------


def test_ingress_class_default_annotation():
    obj: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {
            "name": "certctl",
            "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"},
        },
        "spec": {"controller": "certctl.io/ingress"},
    }
    assert parsing.parse_ingress_class(obj) == resources.IngressClass(
        name="certctl", controller="certctl.io/ingress", is_default=True
    )
    del obj["metadata"]["annotations"]
    assert parsing.parse_ingress_class(obj).is_default is False


def test_service_ports_with_named_and_numbered_targets():
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "apps"},
        "spec": {
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "https", "port": 443, "targetPort": "https"},
                {"port": 9000},
            ]
        },
    }
    service = parsing.parse_service(obj)
    assert service.ports == (
        resources.ServicePort(port=80, name="http", target_port=8080),
        resources.ServicePort(port=443, name="https", target_port="https"),
        resources.ServicePort(port=9000),
    )
    obj["spec"]["ports"][0]["port"] = 70000
    assert invalid(parsing.parse_service, obj).field == "spec.ports[0].port"


def test_endpoint_slice_ready_defaults_to_true():
    obj: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abc",
            "namespace": "apps",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": ["10.0.0.1"]},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
        ],
    }
    eps = parsing.parse_endpoint_slice(obj)
    assert eps.service_name == "web"
    assert eps.ports == (resources.EndpointPort(port=8080, name="http"),)
    assert eps.endpoints == (
        resources.Endpoint(addresses=("10.0.0.1",), ready=True),
        resources.Endpoint(addresses=("10.0.0.2",), ready=False),
    )
    del obj["metadata"]["labels"]
    assert invalid(parsing.parse_endpoint_slice, obj).field == "metadata.labels"


def test_legacy_endpoints_become_one_slice_per_subset():
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "web", "namespace": "apps"},
        "subsets": [
            {
                "addresses": [{"ip": "10.0.0.1"}],
                "notReadyAddresses": [{"ip": "10.0.0.2"}],
                "ports": [{"port": 8080, "name": "http"}],
            },
            {"addresses": [{"ip": "10.0.1.1"}], "ports": [{"port": 9090}]},
        ],
    }
    slices = parsing.parse_endpoints(obj)
    assert [s.name for s in slices] == ["web-0", "web-1"]
    assert all(s.service_name == "web" for s in slices)
    assert slices[0].endpoints == (
        resources.Endpoint(addresses=("10.0.0.1",), ready=True),
        resources.Endpoint(addresses=("10.0.0.2",), ready=False),
    )
    assert slices[1].ports == (resources.EndpointPort(port=9090),)


# --- challenges -----------------------------------------------------------------------------


def _challenge(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "url": "https://acme.example.test/chall/1",
        "authorizationURL": "https://acme.example.test/authz/1",
        "dnsName": "example.test",
        "wildcard": True,
        "type": "DNS-01",
        "token": "tok",
        "key": "tok.thumb",
        "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"},
        "solver": {"dns01": {"rfc2136": {"nameserver": "127.0.0.1:53"}}},
        "solverIndex": 1,
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "certctl.io/v1",
        "kind": "Challenge",
        "metadata": {"name": "web-1", "namespace": "apps"},
        "spec": spec,
    }


def test_challenge_is_read():
    challenge = parsing.parse_challenge(_challenge())
    assert challenge.type == "DNS-01"
    assert challenge.wildcard is True
    assert challenge.solver_index == 1
    assert challenge.issuer_ref.kind == "ClusterIssuer"
    assert challenge.authorization_url == "https://acme.example.test/authz/1"


def test_challenge_type_must_be_known():
    assert invalid(parsing.parse_challenge, _challenge(type="TLS-SNI-01")).field == "spec.type"


def test_challenge_requires_token():
    obj = _challenge()
    del obj["spec"]["token"]
    assert invalid(parsing.parse_challenge, obj).field == "spec.token"


def test_challenge_carries_the_solver_it_was_created_with():
    solver = {"selector": {"dnsZones": ["example.test"], "matchLabels": {"team": "web"}},
              "dns01": {"rfc2136": {"nameserver": "127.0.0.1:53", "tsigKeyName": "k"}}}
    challenge = parsing.parse_challenge(_challenge(solver=solver))
    assert challenge.solver.config == resources.Dns01ProviderSolver(
        provider="rfc2136", config=(("nameserver", "127.0.0.1:53"), ("tsigKeyName", "k")))
    assert parsing.solver_spec(challenge.solver) == solver, "written back as it was read"
    http01 = {"http01": {"ingress": {"ingressClassName": "certctl"}}}
    assert parsing.solver_spec(parsing.parse_challenge(_challenge(solver=http01)).solver) == http01


def test_challenge_requires_its_solver():
    obj = _challenge()
    del obj["spec"]["solver"]
    assert invalid(parsing.parse_challenge, obj).field == "spec.solver"


def test_size_without_algorithm_keeps_cert_manager_meaning_of_rsa():
    from certctl.api import parsing

    certificate = parsing.parse_certificate({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"secretName": "web-tls", "dnsNames": ["web.example.test"],
                 "issuerRef": {"name": "ca"}, "privateKey": {"size": 4096}},
    })
    assert (certificate.private_key.algorithm, certificate.private_key.size) == ("RSA", 4096)
