"""DNS-01 for the Challenge reconciler: which provider, where the record goes, check, clean up.

The reconciler decides when each step runs (present once, self-check until
the value is served, accept, clean up when the challenge ends); this module
does the DNS-01 part of each step. It keeps one piece of state: what this
process presented for which Challenge, with the provider built for it, so
that the record of a deleted Challenge is still removed although the
Challenge (and maybe its issuer) is gone. The state is in memory: a record
whose Challenge is deleted while certctl is stopped stays behind (a
Challenge that still exists is cleaned up from its own spec after a restart).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from certctl.api.resources import Challenge, Issuer, ObjectKey
from certctl.solvers.dns01 import config, credentials, errors, lookup, propagation, registry
from certctl.solvers.dns01.provider import Provider, ProviderContext, TxtRecord
from certctl.store.interface import Store

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


def challenge_fqdn(challenge: Challenge) -> str:
    """`_acme-challenge.<name>.`, for wildcard names too (RFC 8555 section 8.4)."""
    return lookup.absolute(f"{CHALLENGE_LABEL}.{challenge.dns_name}")


class Dns01Solver:
    """Thread-safe; one per controller process (`challenges.Settings.dns01`)."""

    def __init__(self, *, options: Options | None = None) -> None:
        self.options = options or Options()
        self.dns = lookup.DnsLookup(nameservers=self.options.recursive_nameservers,
                                    timeout=self.options.query_timeout)
        self._presented: dict[ObjectKey, Presented] = {}
        self._lock = threading.Lock()

    def txt_record(self, *, challenge: Challenge) -> TxtRecord:
        """Where the challenge's TXT value goes: CNAMEs followed, then the zone found."""
        fqdn = self.dns.follow_cnames(challenge_fqdn(challenge))
        return TxtRecord(dns_name=challenge.dns_name, wildcard=challenge.wildcard, fqdn=fqdn,
                         zone=self.dns.find_zone(fqdn), value=challenge.key)

    def provider_for(
        self, *, store: Store, issuer: Issuer, solver_index: int, cluster_resource_namespace: str
    ) -> tuple[str, Provider]:
        """The provider of `solvers[solver_index]`, built with its config and Secrets."""
        assert issuer.acme is not None
        solvers = issuer.acme.solvers
        at = f"spec.acme.solvers[{solver_index}]"
        solver = solvers[solver_index] if solver_index < len(solvers) else None
        if solver is None or solver.dns01_provider is None:
            raise errors.ConfigError(f"{issuer.key}: {at} is not a DNS-01 solver (the issuer"
                                     " changed since the challenge was created)")
        name = solver.dns01_provider
        namespace = issuer.namespace or cluster_resource_namespace
        context = ProviderContext(
            secrets=credentials.SecretReader(store=store, namespace=namespace),
            dns=self.dns,
            allow_ambient_credentials=(self.options.issuer_ambient_credentials
                                       if issuer.namespace else
                                       self.options.cluster_issuer_ambient_credentials),
            api_endpoints=self.options.api_endpoints,
            timeout=self.options.api_timeout,
        )
        provider_config = config.ProviderConfig(dict(solver.dns01_config),
                                                path=f"{at}.dns01.{name}")
        try:
            factory = registry.find_factory(name)
            return name, factory(config=provider_config, context=context)
        except errors.Dns01Error as err:
            named = copy.copy(err)  # same kind (a plugin's own subclass too), issuer named
            named.args = (f"{issuer.key}: {err}",)
            raise named from err
        except Exception as err:  # a plugin's bug must read as a failed challenge, not a crash
            raise errors.ConfigError(f"{issuer.key}: the {name} provider failed to start:"
                                     f" {type(err).__name__}: {err}") from err

    def present(
        self,
        *,
        key: ObjectKey,
        store: Store,
        issuer: Issuer,
        challenge: Challenge,
        cluster_resource_namespace: str,
        now: datetime.datetime,
    ) -> Presented:
        """Write the challenge's TXT value; raises `errors.Dns01Error`.

        A present that failed for a temporary reason may still have reached
        the provider (a timeout after the write), so it is remembered for
        cleanup, unconfirmed (`presented()` does not return it, so the
        caller presents again); a refused one wrote nothing.
        """
        name, provider = self.provider_for(store=store, issuer=issuer,
                                           solver_index=challenge.solver_index,
                                           cluster_resource_namespace=cluster_resource_namespace)
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

    def check(self, *, record: TxtRecord) -> None:
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

    def cleanup(
        self,
        *,
        key: ObjectKey,
        rebuild_from: tuple[Store, Issuer, Challenge, str] | None = None,
    ) -> Presented | None:
        """Remove the record presented for `key`; returns what was removed, if anything.

        Uses what this process presented; `rebuild_from` (store, issuer,
        challenge, cluster resource namespace) rebuilds it after a restart.
        Raises `errors.Dns01Error`; the record is then still remembered, so
        a later call can try again.
        """
        with self._lock:
            presented = self._presented.get(key)
        if presented is None and rebuild_from is not None:
            store, issuer, challenge, namespace = rebuild_from
            name, provider = self.provider_for(store=store, issuer=issuer,
                                               solver_index=challenge.solver_index,
                                               cluster_resource_namespace=namespace)
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
