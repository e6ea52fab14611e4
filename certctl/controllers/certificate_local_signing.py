"""Issuers that sign in-process (selfSigned, ca): the certificate is signed in the
pass that found it was needed, and no Order is placed."""

from __future__ import annotations

import datetime

from certctl.api.resources import Issuer, IssuerSpec
from certctl.controllers import (
    certificate_fallback,
    certificate_issuing,
    certificate_keys,
    certificate_status,
    issuer_fallback,
    policies,
)
from certctl.controllers.certificate_fallback import Fallback
from certctl.controllers.certificate_settings import Settings
from certctl.controllers.reconciling import Result
from certctl.issuers import protocol, registry
from certctl.store.interface import Object, Store


def sign_locally(
    store: Store,
    obj: Object,
    *,
    fallback: Fallback,
    issuer: Issuer[IssuerSpec],
    data: policies.Input,
    violation: policies.Violation,
    secret: Object | None,
    now: datetime.datetime,
    settings: Settings,
    env: protocol.Environment,
    keep_ready: bool,
) -> Result:
    """Issuers that place no orders (selfSigned, ca): signed in this pass."""
    certificate = fallback.certificate
    private_key = certificate_keys.key_for_issuance(certificate=certificate, data=data)
    request_pem = certificate_keys.signing_request(certificate=certificate, key=private_key)
    try:
        outcome = registry.issuer_type(issuer).issue(
            store=store, issuer=issuer, env=env, request=protocol.Request(
                certificate=fallback.tried, csr_pem=request_pem, private_key=private_key,
                now=now))
    except protocol.CannotIssue as err:
        if fallback.has_next:
            return certificate_fallback.fall_back(
                store, obj, fallback=fallback, now=now, request=None,
                reason=issuer_fallback.ISSUER_NOT_READY, message=str(err))
        return certificate_status.not_ready(store, obj, reason="IssuerNotReady",
                                            message=str(err), now=now, keep_ready=keep_ready)
    assert isinstance(outcome, protocol.Issued)  # an issuer that places no orders
    signed = outcome.certificate
    store.emit_event(obj=obj, type="Normal", reason="Requested",
                     message=f"Issuing a certificate {outcome.how}: {violation.message}")
    return certificate_issuing.store_issued(
        store, obj, fallback=fallback, issuer=issuer, private_key=private_key,
        chain_pem=signed.chain_pem, ca_pem=signed.ca_pem, current=secret,
        failed_request="local-signing",
        now=now, failures=0, settings=settings)
