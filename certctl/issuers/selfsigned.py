"""The selfSigned issuer: every certificate is signed by its own private key.

As in cert-manager, `ca.crt` holds the certificate itself (it is its own
root), and the key may be of any type certctl generates, Ed25519 included.
No I/O: the caller brings the key it generated and the CSR made with it.
"""

from __future__ import annotations

import datetime

from certctl.issuers import issued
from certctl.pki import keys, selfsigned


def sign(
    *,
    csr_pem: bytes,
    key: keys.PrivateKey,
    now: datetime.datetime,
    duration: datetime.timedelta,
) -> issued.IssuedCertificate:
    """A certificate valid from `now` for `duration`; ValueError if `key` did not make the CSR."""
    leaf = selfsigned.self_sign_csr(csr_pem=csr_pem, key=key, not_before=now,
                                    not_after=now + duration)
    return issued.IssuedCertificate(chain_pem=leaf, ca_pem=leaf)
