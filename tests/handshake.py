"""A TLS handshake between two memory BIOs: what a certificate store's choice presents."""

from __future__ import annotations

import contextlib
import ssl

from cryptography import x509

from certctl.dataplane import certstore
from certctl.dataplane.credentials import BINDING, Credentials


def presenting(credentials: Credentials, *, context: ssl.SSLContext | None = None,
               outcomes: list[bool] | None = None) -> ssl.SSLContext:
    """`context` (a new certificate-less one by default) with an SNI callback that has each
    connection present `credentials`, as the data plane's listener does: a refusal is
    recorded in `outcomes` and the handshake goes on without a certificate."""
    server = context or certstore.new_server_context()

    def present(connection: ssl.SSLObject, _name: str | None,
                _context: ssl.SSLContext) -> None:
        assert BINDING is not None  # there are no credentials without it
        presented = credentials.present(
            BINDING.ssl_of(connection._sslobj))  # type: ignore[attr-defined]
        if outcomes is not None:
            outcomes.append(presented)

    server.sni_callback = present
    return server


def presented_leaf(presented: certstore.Presented, *, name: str,
                   cadata: str) -> x509.Certificate:
    """The leaf a client trusting `cadata` verified, in a handshake for SNI `name` with a
    server presenting `presented`: a context, or credentials (`presenting`)."""
    server = presented if isinstance(presented, ssl.SSLContext) else presenting(presented)
    client = ssl.create_default_context(cadata=cadata)
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client_tls = client.wrap_bio(client_in, client_out, server_hostname=name)
    server_tls = server.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        for side in (client_tls, server_tls):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    der = client_tls.getpeercert(binary_form=True)
    assert der is not None, "the handshake did not complete"
    return x509.load_der_x509_certificate(der)
