"""A TLS handshake between two memory BIOs: what a certificate store's choice presents."""

from __future__ import annotations

import contextlib
import ssl

from cryptography import x509

from certctl.dataplane import certstore


def presented_leaf(presented: certstore.Presented, *, name: str, cadata: str) -> x509.Certificate:
    """The leaf a client trusting `cadata` verified, in a handshake for SNI `name` with a
    server presenting `presented`: a context, or credentials set on a certificate-less one
    in its SNI callback (as the data plane's listener does)."""
    if isinstance(presented, ssl.SSLContext):
        server = presented
    else:
        credentials = presented

        def present(connection: ssl.SSLObject, _name: str | None,
                    _context: ssl.SSLContext) -> int | None:
            presented_it = credentials.present(connection._sslobj)  # type: ignore[attr-defined]
            return None if presented_it else ssl.ALERT_DESCRIPTION_INTERNAL_ERROR

        server = certstore.new_server_context()
        server.sni_callback = present
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
