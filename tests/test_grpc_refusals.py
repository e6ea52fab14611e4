"""gRPC calls the data plane refuses itself get the status their HTTP answer maps to.

Real grpcio clients over TLS and HTTP/2: a call refused by an access rule, a limit,
a route refused for an annotation it does not enforce, or no route or endpoint at all
is answered as gRPC servers answer (a trailers-only response: HTTP 200 with grpc-status
and grpc-message), with the code of gRPC's HTTP to gRPC status mapping, whether its
request body was read or not. Other HTTP/2 requests, and HTTP/1.1 ones, keep the HTTP
status.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc  # type: ignore[import-untyped]  # grpcio ships no stubs
import pytest

from tests.test_access_rules import basic, htpasswd
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import Running, running_plane, simple_ingress
from tests.test_grpc_backends import SERVICE, GrpcBackend, channel, http11_exchange, method

NGINX = "nginx.ingress.kubernetes.io/"
CERTCTL = "certctl.io/"
GRPC = {CERTCTL + "backend-protocol": "GRPC"}
GRPC_HEADERS = (("content-type", "application/grpc"), ("te", "trailers"))
A_MESSAGE = b"\x00\x00\x00\x00\x01x"  # one gRPC message of one byte


@pytest.fixture(scope="module")
def backend() -> Iterator[GrpcBackend]:
    server = GrpcBackend()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plane(backend: GrpcBackend) -> Iterator[Running]:
    ingresses = [
        simple_ingress("open", {("open.test", "/"): "grpc"}, annotations=GRPC),
        simple_ingress("denied", {("denied.test", "/"): "grpc"},
                       annotations={**GRPC, NGINX + "whitelist-source-range": "10.0.0.0/8"}),
        simple_ingress("auth", {("auth.test", "/"): "grpc"},
                       annotations={**GRPC, NGINX + "auth-type": "basic",
                                    NGINX + "auth-secret": "users",
                                    NGINX + "auth-realm": "Staff only"}),
        simple_ingress("limited", {("limited.test", "/"): "grpc"},
                       annotations={**GRPC, NGINX + "limit-rps": "1",
                                    NGINX + "limit-burst-multiplier": "1"}),
        simple_ingress("refused", {("refused.test", "/"): "grpc"},
                       annotations={**GRPC, NGINX + "auth-proxy-set-headers": "default/h"}),
        simple_ingress("elsewhere", {("elsewhere.test", "/other"): "grpc"}, annotations=GRPC),
        simple_ingress("empty", {("empty.test", "/"): "empty"}, annotations=GRPC),
    ]
    secrets = {("default", "users"): {"auth": htpasswd("alice", "pw", flag="-B").encode()}}
    hosts = ("open.test", "denied.test", "auth.test", "limited.test", "refused.test",
             "elsewhere.test", "empty.test", "nowhere.test")
    with running_plane(ingresses=ingresses, backends={"grpc": (backend.port,), "empty": ()},
                       tls_hosts=hosts, secrets=secrets) as running:
        yield running


def refusal(plane: Running, host: str, **call: object) -> grpc.RpcError:
    """The error of a unary call to `host` (which must fail)."""
    with channel(plane, host) as opened, pytest.raises(grpc.RpcError) as raised:
        method(opened, "unary_unary", "Unary")(b"x", timeout=10, **call)
    return raised.value


def test_a_source_range_refusal_is_permission_denied(plane, backend):
    calls = len(backend.seen.metadata)
    error = refusal(plane, "denied.test")
    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, "Forbidden")
    assert len(backend.seen.metadata) == calls  # never reached


def test_a_refusal_before_the_request_body_was_read_keeps_its_status(plane):
    # A client stream still sending when refused: the answer is followed by RST_STREAM
    # NO_ERROR for the unread rest (RFC 9113 8.1), which must not turn it into UNAVAILABLE.
    def slowly() -> Iterator[bytes]:
        for _ in range(5):
            yield b"part"
            time.sleep(0.1)

    with channel(plane, "denied.test") as opened, pytest.raises(grpc.RpcError) as raised:
        method(opened, "stream_unary", "Total")(slowly(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_basic_auth_without_credentials_is_unauthenticated(plane, backend):
    error = refusal(plane, "auth.test")
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                               "Unauthorized")
    assert ("www-authenticate", 'Basic realm="Staff only"') in error.trailing_metadata()
    assert refusal(plane, "auth.test", metadata=(("authorization", basic("alice", "no")),)
                   ).code() == grpc.StatusCode.UNAUTHENTICATED
    with channel(plane, "auth.test") as opened:
        answer = method(opened, "unary_unary", "Unary")(
            b"in", timeout=10, metadata=(("authorization", basic("alice", "pw")),))
    assert answer == b"echo:in"


def test_a_limit_is_unavailable(plane):
    # limit-rps 1, burst 1: the data plane's 503 maps to UNAVAILABLE, which gRPC clients
    # and their retry policies take as "try again later".
    with channel(plane, "limited.test") as opened:
        unary = method(opened, "unary_unary", "Unary")
        errors = []
        for index in range(10):
            try:
                assert unary(b"%d" % index, timeout=10) == b"echo:%d" % index
            except grpc.RpcError as error:
                errors.append((error.code(), error.details()))
    assert errors, "no call was limited"
    assert set(errors) == {(grpc.StatusCode.UNAVAILABLE, "Service Unavailable")}


def test_a_route_refused_for_an_unenforced_annotation_says_why(plane):
    error = refusal(plane, "refused.test")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == ("Not served: this Ingress asks for access restrictions "
                               "certctl does not enforce.")


@pytest.mark.parametrize("host", ["nowhere.test", "elsewhere.test"],
                         ids=["unknown-host", "unknown-path"])
def test_no_route_is_unimplemented(plane, host):
    error = refusal(plane, host)
    assert (error.code(), error.details()) == (grpc.StatusCode.UNIMPLEMENTED, "Not Found")


def test_a_route_without_endpoints_is_unavailable(plane):
    assert refusal(plane, "empty.test").code() == grpc.StatusCode.UNAVAILABLE


def test_the_trailers_only_answer_on_the_wire(plane):
    client = H2Client(plane, "denied.test")
    try:
        grpc_call = client.request("POST", f"/{SERVICE}/Unary", body=A_MESSAGE,
                                   headers=GRPC_HEADERS)
        plain = client.request("POST", f"/{SERVICE}/Unary", body=A_MESSAGE,
                               headers=(("content-type", "application/octet-stream"),))
        web = client.request("POST", f"/{SERVICE}/Unary", body=A_MESSAGE,
                             headers=(("content-type", "application/grpc-web+proto"),))
        grpc_answer, plain_answer, web_answer = client.wait(grpc_call, plain, web)
    finally:
        client.close()
    assert grpc_answer["status"] == 200
    assert grpc_answer["body"] == b""
    headers = grpc_answer["headers"]
    assert (headers[b"content-type"], headers[b"grpc-status"], headers[b"grpc-message"]) == (
        b"application/grpc", b"7", b"Forbidden")
    # Not a gRPC request (grpc-web clients read the HTTP status): the HTTP answer.
    assert (plain_answer["status"], plain_answer["body"]) == (403, b"Forbidden\n")
    assert (web_answer["status"], web_answer["body"]) == (403, b"Forbidden\n")


def test_an_http11_client_keeps_the_http_status(plane):
    received = http11_exchange(
        plane, "denied.test",
        b"POST /%s/Unary HTTP/1.1\r\nHost: denied.test\r\nContent-Type: application/grpc\r\n"
        b"Content-Length: 6\r\nConnection: close\r\n\r\n\x00\x00\x00\x00\x01x" % SERVICE.encode())
    assert received.startswith(b"HTTP/1.1 403 Forbidden\r\n")
