"""The DNS-01 solver (`solvers.protocol.Solver`): provider, where the record goes, check, clean up.

The reconciler decides when each step runs (present once, self-check until
the value is served, accept, clean up when the challenge ends); this module
does the DNS-01 part of each step, with the provider and configuration the
Challenge carries (`spec.solver.dns01`, copied from the issuer when the
Challenge was created). It answers dns-account-01 too
(draft-ietf-acme-dns-account-label, as the solver's `accountLabel` allows):
the same TXT value at a name of the ACME account's own, so several accounts
can validate one name at once. It keeps one piece of state: what this
process presented for which Challenge, with the provider built for it, so
that the record of a deleted Challenge is still removed although the
Challenge is gone. The state is in memory: a record whose Challenge is deleted while
certctl is stopped stays behind (a Challenge that still exists is cleaned up
from its own spec after a restart).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import hashlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from certctl.api.resources import (
    Challenge,
    ChallengeType,
    Dns01ProviderSolver,
    ObjectKey,
    SolverConfig,
)
from certctl.issuers.acme import client as acme_client
from certctl.solvers import protocol
from certctl.solvers.dns01 import config, credentials, errors, lookup, propagation, registry
from certctl.solvers.dns01.provider import Provider, ProviderContext, TxtRecord
from certctl.store.interface import Object, Store

logger = logging.getLogger(__name__)

CHALLENGE_LABEL = "_acme-challenge"


@dataclass(frozen=True, kw_only=True)
class Options:
    """How certctl talks DNS; the defaults suit a host whose resolver sees public DNS."""

    recursive_nameservers: tuple[lookup.Nameserver, ...] = ()
    """Where zone, CNAME and NS lookups go (cert-manager's --dns01-recursive-nameservers);
    empty: the host's resolvers from /etc/resolv.conf."""
    recursive_nameservers_only: bool = False
    """Self-check against `recursive_nameservers` instead of the zone's authoritative ones."""
    propagation_timeout: datetime.timedelta = datetime.timedelta(minutes=5)
    """How long the self-check may wait for the value before the challenge fails, counted
    from the first present in this process (a restart starts the wait again)."""
    query_timeout: float = 2.0
    """Seconds per DNS query and server."""
    api_timeout: float = 10.0
    """Seconds per provider API request."""
    api_endpoints: Mapping[str, str] = field(default_factory=dict)
    """Base URL overrides per provider API (see `ProviderContext.api_endpoints`)."""
    cluster_issuer_ambient_credentials: bool = True
    issuer_ambient_credentials: bool = False


@dataclass(frozen=True, kw_only=True)
class Presented:
    """A record presented for one Challenge, and the provider that can take it away."""

    provider_name: str
    provider: Provider = field(repr=False)  # may hold credentials
    record: TxtRecord
    presented_at: datetime.datetime
    """When it was first presented: the start of the propagation wait."""
    confirmed: bool = True
    """False when the provider's answer was lost (a timeout): it may or may not be there."""

    def describe(self) -> str:
        return (f"TXT {self.record.fqdn} in zone {self.record.zone}"
                f" via the {self.provider_name} provider")


def account_label(account_uri: str) -> str:
    """The dns-account-01 label of an ACME account (draft-ietf-acme-dns-account-label):
    `_` and the lowercase base32 of the first 10 bytes of SHA-256 of the account's URL
    (16 characters, no padding since 10 bytes are 80 bits)."""
    digest = hashlib.sha256(account_uri.encode()).digest()[:10]
    return "_" + base64.b32encode(digest).decode().lower()


def challenge_fqdn(challenge: Challenge) -> str:
    """`_acme-challenge.<name>.` for DNS-01, `_<account label>._acme-challenge.<name>.` for
    DNS-ACCOUNT-01; wildcard names drop their `*.` (RFC 8555 section 8.4)."""
    name = f"{CHALLENGE_LABEL}.{challenge.dns_name}"
    if challenge.type == "DNS-ACCOUNT-01":
        if not challenge.account_uri:  # parsing refuses it; the type checker cannot know
            raise errors.ConfigError(f"{challenge.key_ref}: spec.accountURI: is required")
        name = f"{account_label(challenge.account_uri)}.{name}"
    return lookup.absolute(name)


def challenge_types(config: Dns01ProviderSolver) -> tuple[str, ...]:
    """The ACME challenge types (wire names) a DNS-01 solver answers, preferred first, as its
    `accountLabel` says: dns-account-01 puts each account's record at its own name, so
    other ACME clients validating the same name at once do not race on one record set."""
    return {"Never": ("dns-01",), "IfOffered": ("dns-account-01", "dns-01"),
            "Required": ("dns-account-01",)}[config.account_label]


class Dns01Solver:
    """Thread-safe; one per controller process."""

    config_type: type = Dns01ProviderSolver
    challenge_type: ChallengeType = "DNS-01"
    ends_with_its_challenge = True
    proves_wildcards = True

    def __init__(self, *, cluster_resource_namespace: str, options: Options | None = None) -> None:
        self.options = options or Options()
        # Where a ClusterIssuer's provider Secrets live, as in cert-manager.
        self.cluster_resource_namespace = cluster_resource_namespace
        self.dns = lookup.DnsLookup(nameservers=self.options.recursive_nameservers,
                                    timeout=self.options.query_timeout)
        self._presented: dict[ObjectKey, Presented] = {}
        self._lock = threading.Lock()

    # --- the Solver protocol ---------------------------------------------------------

    @staticmethod
    def configuration_problem(config: SolverConfig) -> str | None:
        """A provider nobody registered is refused before any order is placed."""
        if not isinstance(config, Dns01ProviderSolver):
            return f"not a DNS-01 solver: {type(config).__name__}"
        try:
            registry.find_factory(config.provider)
        except errors.Dns01Error as err:
            return f"dns01: {err}"
        return None

    @staticmethod
    def challenge_key(*, client: acme_client.AccountClient, token: str) -> str:
        # As in cert-manager, a DNS-01 Challenge's key is the TXT value itself.
        return client.dns01_txt_value(token)

    def present(
        self, *, store: Store, obj: Object, challenge: Challenge, now: datetime.datetime
    ) -> protocol.Presented | None:
        """Write the TXT record unless this process already did.

        A restarted controller writes it again (providers make that a no-op),
        which also brings back what cleanup on deletion needs.
        """
        if self.presented(challenge.key_ref) is not None:
            return None
        try:
            presented = self.present_record(store=store, challenge=challenge, now=now)
        except errors.Dns01Error as err:
            raise protocol.PresentFailed(str(err), permanent=err.permanent) from err
        return protocol.Presented(description=presented.describe(), announce=True)

    def check(self, *, challenge: Challenge, now: datetime.datetime) -> None:
        """Fails for good once the record was not served for the propagation timeout."""
        presented = self.presented(challenge.key_ref)
        if presented is None:
            raise protocol.NotServed("no TXT record presented by this process yet")
        try:
            self.check_record(record=presented.record)
        except propagation.NotVisible as err:
            waited = now - presented.presented_at
            if waited > self.options.propagation_timeout:
                raise protocol.NotServed(f"DNS-01 self-check failed after waiting"
                                         f" {int(waited.total_seconds())}s: {err}",
                                         final=True) from err
            raise protocol.NotServed(str(err)) from err

    def clean_up(
        self, *, store: Store, key: ObjectKey, challenge: Challenge | None
    ) -> str | None:
        """A temporary failure keeps the record remembered, so a later call can try again; a
        permanent one (the credentials were revoked meanwhile) gives up on it."""
        try:
            removed = self.remove_record(
                key=key, rebuild_from=(store, challenge) if challenge is not None else None)
        except errors.Dns01Error as err:
            if not err.permanent:
                raise protocol.CleanUpFailed(f"removing the DNS-01 TXT record: {err}",
                                             permanent=False) from err
            self.forget(key)
            raise protocol.CleanUpFailed(f"Could not remove the DNS-01 TXT record: {err}",
                                         permanent=True) from err
        return removed.describe() if removed is not None else None

    # --- the steps ---------------------------------------------------------------------

    def txt_record(self, *, challenge: Challenge) -> TxtRecord:
        """Where the challenge's TXT value goes: CNAMEs followed, then the zone found."""
        fqdn = self.dns.follow_cnames(challenge_fqdn(challenge))
        return TxtRecord(dns_name=challenge.dns_name, wildcard=challenge.wildcard, fqdn=fqdn,
                         zone=self.dns.find_zone(fqdn), value=challenge.key)

    def provider_for(self, *, store: Store, challenge: Challenge) -> tuple[str, Provider]:
        """The provider of the Challenge's solver, built with its config and Secrets.

        Errors name the issuer's field the configuration was copied from: that
        is where it is fixed.
        """
        solver = challenge.solver.config
        ref = challenge.issuer_ref
        namespaced = ref.kind == "Issuer"
        issuer = ObjectKey(kind=ref.kind, namespace=challenge.namespace if namespaced else None,
                           name=ref.name)
        if not isinstance(solver, Dns01ProviderSolver):
            raise errors.ConfigError(f"{issuer}: {challenge.key_ref} has no DNS-01 solver")
        name = solver.provider
        at = f"spec.acme.solvers[{challenge.solver_index}]"
        context = ProviderContext(
            secrets=credentials.SecretReader(
                store=store,
                namespace=challenge.namespace if namespaced else self.cluster_resource_namespace),
            dns=self.dns,
            allow_ambient_credentials=(self.options.issuer_ambient_credentials if namespaced
                                       else self.options.cluster_issuer_ambient_credentials),
            api_endpoints=self.options.api_endpoints,
            timeout=self.options.api_timeout,
        )
        provider_config = config.ProviderConfig(dict(solver.config), path=f"{at}.dns01.{name}")
        try:
            factory = registry.find_factory(name)
            return name, factory(config=provider_config, context=context)
        except errors.Dns01Error as err:
            named = copy.copy(err)  # same kind (a plugin's own subclass too), issuer named
            named.args = (f"{issuer}: {err}",)
            raise named from err
        except Exception as err:  # a plugin's bug must read as a failed challenge, not a crash
            raise errors.ConfigError(f"{issuer}: the {name} provider failed to start:"
                                     f" {type(err).__name__}: {err}") from err

    def present_record(
        self, *, store: Store, challenge: Challenge, now: datetime.datetime
    ) -> Presented:
        """Write the challenge's TXT value; raises `errors.Dns01Error`.

        A present that failed for a temporary reason may still have reached
        the provider (a timeout after the write), so it is remembered for
        cleanup, unconfirmed (`presented()` does not return it, so the
        caller presents again); a refused one wrote nothing.
        """
        key = challenge.key_ref
        name, provider = self.provider_for(store=store, challenge=challenge)
        with self._lock:
            earlier = self._presented.get(key)
        presented = Presented(provider_name=name, provider=provider,
                              record=self.txt_record(challenge=challenge),
                              presented_at=earlier.presented_at if earlier else now,
                              confirmed=False)
        try:
            _call(presented, operation="present")
        except errors.TemporaryError:
            self._remember(key, presented)
            raise
        confirmed = dataclasses.replace(presented, confirmed=True)
        self._remember(key, confirmed)
        return confirmed

    def check_record(self, *, record: TxtRecord) -> None:
        """Raise `propagation.NotVisible` unless the value is served where the CA will look."""
        propagation.check_txt_visible(
            dns=self.dns, fqdn=record.fqdn, zone=record.zone, value=record.value,
            nameservers=(self.options.recursive_nameservers
                         if self.options.recursive_nameservers_only else ()))

    def presented(self, key: ObjectKey) -> Presented | None:
        """What this process presented for `key` and the provider confirmed, if anything."""
        with self._lock:
            found = self._presented.get(key)
        return found if found is not None and found.confirmed else None

    def remove_record(
        self, *, key: ObjectKey, rebuild_from: tuple[Store, Challenge] | None = None
    ) -> Presented | None:
        """Remove the record presented for `key`; returns what was removed, if anything.

        Uses what this process presented; `rebuild_from` (the store holding the
        provider's Secrets, and the Challenge that presented it) rebuilds it
        after a restart. Raises `errors.Dns01Error`; the record is then still
        remembered, so a later call can try again.
        """
        with self._lock:
            presented = self._presented.get(key)
        if presented is None and rebuild_from is not None:
            store, challenge = rebuild_from
            name, provider = self.provider_for(store=store, challenge=challenge)
            presented = Presented(provider_name=name, provider=provider,
                                  record=self.txt_record(challenge=challenge),
                                  presented_at=datetime.datetime.now(datetime.UTC))
        if presented is None:
            return None
        _call(presented, operation="cleanup")
        self.forget(key)
        return presented

    def forget(self, key: ObjectKey) -> None:
        with self._lock:
            self._presented.pop(key, None)

    def _remember(self, key: ObjectKey, presented: Presented) -> None:
        with self._lock:
            self._presented[key] = presented


def _call(presented: Presented, *, operation: str) -> None:
    """Run the provider's present or cleanup; any exception becomes a Dns01Error."""
    method = (presented.provider.present if operation == "present"
              else presented.provider.cleanup)
    try:
        method(record=presented.record)
    except errors.Dns01Error:
        raise
    except Exception as err:  # plugins may raise anything; report it, do not crash
        raise errors.TemporaryError(
            f"the {presented.provider_name} provider failed to {operation}"
            f" TXT {presented.record.fqdn}: {type(err).__name__}: {err}") from err
