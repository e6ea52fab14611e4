"""TLS on the HTTPS listener: protocol policy, resumption, hot swap, many certificates.

Every handshake is a real one against the data plane on loopback, verified
against a throwaway CA; certificates are told apart by serial number.
"""

from __future__ import annotations

import gc
import http.client
import logging
import random
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from certctl.api import resources
from certctl.dataplane import certstore, credentials, tls
from tests.serving import eventually
from tests.test_dataplane import EchoServer, secret
from tests.test_dataplane_proxy import (
    RawServer,
    Running,
    read_head,
    running_plane,
    simple_ingress,
)
from tests.testca import TestCA


@pytest.fixture(scope="module")
def plane() -> Iterator[Running]:
    backend = EchoServer("echo")
    with running_plane(
        ingresses=[simple_ingress("tls", {("swap.test", "/"): "echo", ("a.test", "/"): "echo"})],
        backends={"echo": (backend.port,)},
        tls_hosts=("a.test",),
    ) as running:
        yield running
    backend.shutdown()
    backend.server_close()


def connect(
    running: Running, sni: str, *, context: ssl.SSLContext | None = None, **kwargs
) -> ssl.SSLSocket:
    port = running.plane.https_port
    assert port is not None
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return (context or running.ca.client_context()).wrap_socket(
        raw, server_hostname=sni, **kwargs
    )


def get_to_close_notify(running: Running, host: str) -> bytes:
    """The answer to a `Connection: close` request, read up to the server's close_notify:
    without suppress_ragged_eofs, a TCP close with no close_notify raises SSLEOFError."""
    with connect(running, host, suppress_ragged_eofs=False) as conn:
        conn.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    return response


def serial_of(tls: ssl.SSLSocket) -> int:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def get(tls: ssl.SSLSocket, host: str) -> bytes:
    tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += tls.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(
        line.split(b":")[1]
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    ))
    while len(body) < length:
        body += tls.recv(65536)
    return head.split(b"\r\n")[0]


# --- protocol policy -----------------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls12_and_tls13_negotiate_forward_secret_aead_suites(plane, version):
    context = plane.ca.client_context()
    context.minimum_version = context.maximum_version = version
    with connect(plane, "a.test", context=context) as tls:
        negotiated = tls.cipher()
        assert negotiated is not None
        cipher, protocol, _ = negotiated
        assert protocol == version.name.replace("_", ".")
    assert "GCM" in cipher or "CHACHA20" in cipher
    if version == ssl.TLSVersion.TLSv1_2:
        assert cipher.startswith("ECDHE-")


def test_cbc_only_tls12_client_is_refused(plane, caplog):
    caplog.set_level(logging.DEBUG, logger=tls.__name__)
    refuse_cbc_only_client(plane)
    wait_logged(caplog, lambda message: "handshake" in message
                and message.endswith("failed: no shared cipher"),
                what="the refused handshake logged with OpenSSL's reason")


def refuse_cbc_only_client(plane: Running) -> None:
    context = plane.ca.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA")
    with pytest.raises(ssl.SSLError):
        connect(plane, "a.test", context=context).close()


def wait_logged(caplog: pytest.LogCaptureFixture, check: Callable[[str], bool], *,
                what: str) -> None:
    eventually(lambda: any(check(record.getMessage()) for record in caplog.records),
               timeout=5, what=what)


@pytest.mark.skipif(not str(tls.__file__).endswith(".py"),
                    reason="sources only: a compiled module's constant cannot be replaced")
def test_without_libssl_bound_handshakes_and_closes_go_through_the_ssl_module(
        monkeypatch, caplog):
    # What an interpreter whose libssl cannot be bound runs: contexts, `_ssl`'s methods.
    monkeypatch.setattr(credentials, "BINDING", None)
    monkeypatch.setattr(tls, "_LIBSSL", None)
    caplog.set_level(logging.DEBUG, logger=tls.__name__)
    with running_plane(ingresses=[simple_ingress("tls", {("a.test", "/"): "echo"})],
                       echo=("echo",), tls_hosts=("a.test",)) as fallback:
        assert get_to_close_notify(fallback, "a.test").startswith(b"HTTP/1.1 200")
        refuse_cbc_only_client(fallback)
        wait_logged(caplog, lambda message: "[SSL: NO_SHARED_CIPHER]" in message,
                    what="the refused handshake logged with the ssl module's error")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_returning_client_resumes_its_session(plane, version):
    context = plane.ca.client_context()
    context.maximum_version = version
    with connect(plane, "a.test", context=context) as first:
        assert get(first, "a.test").startswith(b"HTTP/1.1 200")  # TLS 1.3 tickets come after
        session = first.session
        assert not first.session_reused
    with connect(plane, "a.test", context=context, session=session) as second:
        assert second.session_reused
        assert get(second, "a.test").startswith(b"HTTP/1.1 200")


def _session_tickets(plane: Running, *, session_file: Path, resume: bool) -> tuple[int, bool]:
    """(TLS 1.3 session tickets the server sent, whether the session was resumed) for one
    connection by `openssl s_client` sending a request (its tickets come after the
    handshake), keeping its session in `session_file` or resuming the one there."""
    port = plane.plane.https_port
    session = ["-sess_in", str(session_file)] if resume else ["-sess_out", str(session_file)]
    answer = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "a.test",
         "-tls1_3", "-msg", "-ign_eof", *session],
        input=b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        capture_output=True, timeout=10, check=True).stdout.decode(errors="replace")
    assert "HTTP/1.1 200" in answer
    return answer.count(", NewSessionTicket"), "\nReused, TLSv1.3" in answer


def test_a_handshake_is_sent_one_session_ticket_and_resumes_with_it(plane, tmp_path):
    session_file = tmp_path / "session.pem"
    tickets, reused = _session_tickets(plane, session_file=session_file, resume=False)
    assert (tickets, reused) == (1, False)  # OpenSSL's default would send 2
    tickets, reused = _session_tickets(plane, session_file=session_file, resume=True)
    assert (tickets, reused) == (1, True)


def _data_segments_in(sock: socket.socket) -> int:
    """The TCP segments with data `sock` has received: tcp_info's tcpi_data_segs_in
    (Linux 4.6, at byte 152 of struct tcp_info)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    segments: int = struct.unpack_from("I", info, 152)[0]
    return segments


def _answer_in_one_write(conn: socket.socket) -> None:
    """A kept-alive backend that writes each answer, head and body, at once."""
    while read_head(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


@pytest.mark.parametrize("host", ["one.test", "unrouted.test"])
def test_the_last_answer_and_the_close_notify_arrive_in_one_segment(host):
    """A proxied answer (one.test) or the data plane's own (a host with no route) that
    the connection closes after leaves with the close_notify in one send."""
    backend = RawServer(_answer_in_one_write)
    with (
        running_plane(ingresses=[simple_ingress("one", {("one.test", "/"): "one"})],
                      backends={"one": (backend.port,)}, tls_hosts=("one.test",)) as running,
        connect(running, "one.test", suppress_ragged_eofs=False) as conn,
    ):
        # A first, kept-alive exchange: the session ticket came before its answer.
        assert get(conn, "one.test") == b"HTTP/1.1 200 OK"
        before = _data_segments_in(conn)
        conn.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := conn.recv(65536):  # b"" at the close_notify, else SSLEOFError
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200" if host == "one.test" else b"HTTP/1.1 404")
        assert _data_segments_in(conn) - before == 1
    backend.close()


# --- hot swap ----------------------------------------------------------------------------------


def test_certificate_swapped_under_a_client_loop_fails_no_request(plane):
    certificates = plane.plane.certificates
    first = plane.ca.issue("swap.test")
    certificates.set_certificate(
        source=secret("swap"), chain_pem=first.chain_pem, key_pem=first.key_pem
    )
    kept = connect(plane, "swap.test")  # opened before any swap, used after all of them
    assert serial_of(kept) == first.serial
    stop = threading.Event()
    failures: list[BaseException] = []
    seen: set[int] = set()

    def client_loop() -> None:
        while not stop.is_set():
            try:
                with connect(plane, "swap.test") as tls:
                    seen.add(serial_of(tls))
                    assert get(tls, "swap.test").startswith(b"HTTP/1.1 200")
            except BaseException as err:  # every failure is the finding
                failures.append(err)

    threads = [threading.Thread(target=client_loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    issued = [first]
    try:
        for _ in range(15):
            issued.append(plane.ca.issue("swap.test"))
            certificates.set_certificate(
                source=secret("swap"), chain_pem=issued[-1].chain_pem, key_pem=issued[-1].key_pem
            )
            # The next handshake after a swap presents the new certificate.
            with connect(plane, "swap.test") as tls:
                assert serial_of(tls) == issued[-1].serial
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert seen <= {i.serial for i in issued}
    assert len(seen) > 1
    assert get(kept, "swap.test").startswith(b"HTTP/1.1 200")
    kept.close()


# --- many certificates -------------------------------------------------------------------------


def test_thousand_certificates_each_served_for_its_own_name(plane):
    index = certstore.CertificateIndex(context_cache_size=100)
    issued = {f"host{i}.many.test": plane.ca.issue(f"host{i}.many.test") for i in range(1000)}
    for name, cert in issued.items():
        index.set_certificate(
            source=resources.ObjectKey(kind="Secret", namespace="many", name=name),
            chain_pem=cert.chain_pem,
            key_pem=cert.key_pem,
        )
    assert len(index.names()) == 1000
    previous = plane.plane.certificates
    plane.plane.certificates = index
    try:
        sample = random.Random(6).sample(sorted(issued), 150)
        for name in sample:
            with connect(plane, name) as tls:
                assert serial_of(tls) == issued[name].serial
    finally:
        plane.plane.certificates = previous
    assert index.built_count == 100  # the least recently used contexts were let go


def test_evicted_context_is_rebuilt_on_the_next_handshake():
    index = certstore.CertificateIndex(context_cache_size=1)
    ca = TestCA()
    for name in ("one", "two"):
        cert = ca.issue(f"{name}.test")
        index.set_certificate(source=secret(name), chain_pem=cert.chain_pem, key_pem=cert.key_pem)
    first = index.select("one.test")
    index.select("two.test")
    again = index.select("one.test")
    assert index.built_count == 1
    assert again is not first  # rebuilt after eviction
    assert again is not index.select(None)  # and not the default certificate


# --- the TLS transport (certctl.dataplane.tls) -------------------------------------------------


def test_connection_close_response_ends_with_a_close_notify(plane):
    assert get_to_close_notify(plane, "a.test").startswith(b"HTTP/1.1 200")


def test_client_leaving_without_close_notify_frees_its_connection(plane):
    # By identity: the previous test's connection may still be on its way out.
    before = set(plane.plane._connections)
    tls = connect(plane, "a.test")
    assert get(tls, "a.test").startswith(b"HTTP/1.1 200")
    (ours,) = set(plane.plane._connections) - before
    tls.close()  # TCP FIN, no close_notify
    eventually(lambda: ours not in plane.plane._connections, timeout=5,
               what="the data plane to drop the connection")


def _transports_of(clients: set[tuple[str, int]]) -> list[tls.TlsTransport]:
    return [each for each in gc.get_objects()
            if isinstance(each, tls.TlsTransport) and each.get_extra_info("peername") in clients]


def test_a_connection_the_sweeper_checked_is_freed_when_it_ends(plane):
    # The sweeper looks at every connection twice a second; what it looked at last must
    # not stay referenced from its own frame once the connection ends (a CI run failed
    # the test below on it: that connection was still held by a ClientConnection).
    gc.collect()
    gc.disable()
    try:
        with connect(plane, "a.test") as conn:
            clients = {conn.getsockname()}
            assert get(conn, "a.test").startswith(b"HTTP/1.1 200")
            time.sleep(1.2)  # two sweeps with this connection open, likely the only one
        eventually(lambda: not _transports_of(clients), timeout=5,
                   what="the swept connection to be freed with the collector off")
    finally:
        gc.enable()


def test_ended_connections_are_freed_without_the_garbage_collector(plane):
    # No reference cycle may outlive a connection: its objects and OpenSSL's buffers are
    # freed when it ends, not whenever the collector runs next. Only this test's own
    # connections are counted (by their client addresses): the collector is off for the
    # whole process, where other planes' threads may still be ending connections.
    clients: set[tuple[str, int]] = set()

    def left() -> list[tls.TlsTransport]:
        return _transports_of(clients)

    def holders() -> str:
        transports = left()
        return "; ".join(sorted({type(holder).__name__ for each in transports
                                 for holder in gc.get_referrers(each)
                                 if holder is not transports}))

    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            with connect(plane, "a.test") as conn:
                clients.add(conn.getsockname())
                conn.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                while conn.recv(65536):
                    pass
        assert len(clients) == 20
        eventually(lambda: not left(), timeout=5,
                   what="the 20 closed connections to be freed with the collector off")
    except AssertionError as failure:
        raise AssertionError(f"{failure}; still held by: {holders()}") from None
    finally:
        gc.enable()


def _server_side(running: Running, client_address: tuple[str, int]) -> list[tls.TlsTransport]:
    """The HTTPS listener's connections from `client_address`."""
    listener = running.plane._tls
    assert listener is not None
    return [transport for transport in list(listener.transports.values())
            if transport.get_extra_info("peername") == client_address]


def test_accepted_connections_do_not_delay_small_writes(plane):
    # TCP_NODELAY is set on the listening socket and inherited by each connection.
    with connect(plane, "a.test") as conn:
        assert get(conn, "a.test").startswith(b"HTTP/1.1 200")
        (transport,) = _server_side(plane, conn.getsockname())
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_a_connection_is_accepted_once_its_clienthello_is_in(plane):
    # TCP_DEFER_ACCEPT on the listening socket: a client that connects and says nothing
    # is not the data plane's to hold until it speaks (or tls.DEFER_ACCEPT seconds pass).
    raw = socket.create_connection(("127.0.0.1", plane.plane.https_port), timeout=5)
    address = raw.getsockname()
    time.sleep(tls.DEFER_ACCEPT / 3)
    assert _server_side(plane, address) == []
    with plane.ca.client_context().wrap_socket(raw, server_hostname="a.test") as conn:
        assert len(_server_side(plane, address)) == 1
        assert get(conn, "a.test").startswith(b"HTTP/1.1 200")


def test_connection_limit_holds_new_clients_until_one_leaves(caplog):
    backend = EchoServer("echo")
    with running_plane(
        ingresses=[simple_ingress("limit", {("limit.test", "/"): "echo"})],
        backends={"echo": (backend.port,)},
        tls_hosts=("limit.test",),
        max_connections=3,
    ) as running, caplog.at_level("WARNING", logger="certctl.dataplane.server"):
        held = [connect(running, "limit.test") for _ in range(2)]
        plain = running.http()
        plain.request("GET", "/", headers={"Host": "limit.test"})
        assert plain.getresponse().read()  # a kept-alive HTTP connection: the third
        waiting: list[ssl.SSLSocket] = []
        handshaking = threading.Thread(
            target=lambda: waiting.append(connect(running, "limit.test")), daemon=True)
        handshaking.start()
        handshaking.join(1.0)
        assert not waiting  # TCP-connected, but not accepted: no handshake
        refused = running.http()
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            refused.request("GET", "/", headers={"Host": "limit.test"})
            refused.getresponse()
        held.pop().close()
        handshaking.join(5)
        assert waiting, "the waiting client was not accepted when a connection ended"
        assert get(waiting[0], "limit.test").startswith(b"HTTP/1.1 200")
        for conn in [*held, *waiting]:
            conn.close()
        plain.close()
    backend.shutdown()
    backend.server_close()
    limits = [r for r in caplog.records if "--max-connections" in r.getMessage()]
    assert 1 <= len(limits) <= 2, [r.getMessage() for r in limits]


_OUT_OF_DESCRIPTORS = textwrap.dedent("""
    import asyncio, logging, os, resource, sys
    from certctl.dataplane import certstore, server
    logging.basicConfig(level=logging.ERROR, stream=sys.stdout, format="%(message)s")

    async def main():
        plane = server.DataPlane(
            http_address=("127.0.0.1", 0), https_address=("127.0.0.1", 0),
            certificates=certstore.CertificateIndex(),
            challenge_responder=lambda host, token: None)
        await plane.start()
        # Room for 5 more connections, then accept4 fails with EMFILE.
        limit = len(os.listdir("/proc/self/fd")) + 4
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        print("port", plane.https_port, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
""")


def test_running_out_of_file_descriptors_pauses_accepting_and_recovers():
    child = subprocess.Popen([sys.executable, "-c", _OUT_OF_DESCRIPTORS],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline().split()[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
        time.sleep(2.5)
        for sock in idle:  # they never sent a ClientHello; the server sees EOF
            sock.close()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def handshake() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
                    context.wrap_socket(raw, server_hostname="any.test"):
                return True

        eventually(handshake, timeout=10, what="a handshake once descriptors are free")
    finally:
        child.kill()
        output, _ = child.communicate()
    refusals = [line for line in output.splitlines() if "cannot accept TLS connections" in line]
    # Paused for a second each time rather than retried in a busy loop.
    assert 1 <= len(refusals) <= 6, output[-2000:]
