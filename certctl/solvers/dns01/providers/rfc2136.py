"""`dns01.rfc2136`: dynamic DNS updates (RFC 2136), signed with TSIG, to BIND, Knot, PowerDNS...

Configured as in cert-manager:

    rfc2136:
      nameserver: 192.0.2.53:53          # required; [2001:db8::53]:53 for IPv6
      tsigKeyName: certctl               # required with tsigSecretSecretRef
      tsigAlgorithm: HMACSHA256          # HMACMD5 (cert-manager's default), HMACSHA1,
                                         # HMACSHA224, HMACSHA256, HMACSHA384, HMACSHA512
      tsigSecretSecretRef: {name: tsig, key: secret}   # base64, as in named.conf
      protocol: UDP                      # or TCP

As cert-manager does, the zone to update is found by asking this
nameserver for SOA records (it must be authoritative for it anyway). An
UPDATE adding an RR that exists is a no-op and one deleting a single RR
leaves the others of the set, which is exactly the idempotent, value-only
behaviour the provider contract asks for.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update

from certctl.solvers.dns01 import errors, lookup
from certctl.solvers.dns01.config import ProviderConfig
from certctl.solvers.dns01.provider import ProviderContext, TxtRecord

TTL: Final = 60
ALGORITHMS: Final = {
    "HMACMD5": dns.tsig.HMAC_MD5,
    "HMACSHA1": dns.tsig.HMAC_SHA1,
    "HMACSHA224": dns.tsig.HMAC_SHA224,
    "HMACSHA256": dns.tsig.HMAC_SHA256,
    "HMACSHA384": dns.tsig.HMAC_SHA384,
    "HMACSHA512": dns.tsig.HMAC_SHA512,
}
DEFAULT_ALGORITHM: Final = "HMACMD5"


def build(*, config: ProviderConfig, context: ProviderContext) -> Rfc2136Provider:
    config.check_fields(known=("nameserver", "tsigKeyName", "tsigAlgorithm",
                               "tsigSecretSecretRef", "protocol"))
    try:
        nameserver = lookup.parse_nameserver(config.required_str("nameserver"))
    except ValueError as err:
        raise config.fail("nameserver", str(err)) from err
    key_name = config.optional_str("tsigKeyName")
    secret_ref = config.secret_ref("tsigSecretSecretRef")
    if key_name and secret_ref is None:
        raise config.fail("tsigSecretSecretRef", "is required when tsigKeyName is set")
    if secret_ref is not None and not key_name:
        raise config.fail("tsigKeyName", "is required when tsigSecretSecretRef is set")
    algorithm_text = config.optional_str("tsigAlgorithm") or DEFAULT_ALGORITHM
    # Accept both cert-manager's HMACSHA256 and BIND's hmac-sha256 spelling.
    algorithm = ALGORITHMS.get(algorithm_text.upper().replace("-", ""))
    if algorithm is None:
        raise config.fail("tsigAlgorithm", f"{algorithm_text!r} is not supported; use one of "
                          f"{', '.join(ALGORITHMS)}")
    protocol = (config.optional_str("protocol") or "UDP").upper()
    if protocol not in ("UDP", "TCP"):
        raise config.fail("protocol", f"must be UDP or TCP, got {protocol!r}")
    key = None
    secret_source = ""
    if key_name and secret_ref is not None:
        secret = context.secrets.read(secret_ref, field=config.field("tsigSecretSecretRef"))
        secret_source = (f"Secret {context.secrets.namespace}/{secret_ref.name}"
                         f" key {secret_ref.key!r}")
        try:
            secret_bytes = base64.b64decode(secret, validate=True)
        except binascii.Error as err:
            raise errors.ConfigError(
                f"{config.field('tsigSecretSecretRef')}: {secret_source} is not a base64 TSIG"
                " secret (the `secret` of the key in named.conf)") from err
        try:
            key = dns.tsig.Key(key_name, secret_bytes, algorithm)
        except dns.exception.DNSException as err:
            raise config.fail("tsigKeyName", f"{key_name!r} is not a valid key name") from err
    return Rfc2136Provider(nameserver=nameserver, key=key, secret_source=secret_source,
                           tcp=protocol == "TCP", timeout=context.dns.timeout)


class Rfc2136Provider:
    """Sends UPDATEs to one nameserver. Holds the TSIG key: never put it in a message or log
    (`dns.tsig.Key`'s repr includes the secret)."""

    def __init__(
        self,
        *,
        nameserver: lookup.Nameserver,
        key: dns.tsig.Key | None,
        secret_source: str,
        tcp: bool,
        timeout: float,
    ) -> None:
        self.nameserver = nameserver
        self._key = key
        self._secret_source = secret_source
        self._tcp = tcp
        self._timeout = timeout
        self._dns = lookup.DnsLookup(nameservers=(nameserver,), timeout=timeout)

    def __repr__(self) -> str:
        key = f" key {self._key.name}" if self._key is not None else ""
        return f"<rfc2136 provider for {self.nameserver}{key}>"

    def present(self, *, record: TxtRecord) -> None:
        self._update(record=record, add=True)

    def cleanup(self, *, record: TxtRecord) -> None:
        self._update(record=record, add=False)

    def _update(self, *, record: TxtRecord, add: bool) -> None:
        zone = self._dns.find_zone(record.fqdn)
        update = dns.update.UpdateMessage(zone)
        if self._key is not None:
            update.use_tsig(self._key)
        name = dns.name.from_text(record.fqdn)
        rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT,
                                        [record.value.encode()])
        if add:
            update.add(name, TTL, rdata)
        else:
            update.delete(name, rdata)
        response = self._send(update, what=f"{'adding' if add else 'deleting'} TXT"
                                           f" {record.fqdn} in zone {zone}")
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        where = (f"nameserver {self.nameserver} answered {dns.rcode.to_text(rcode)} to"
                 f" {'adding' if add else 'deleting'} TXT {record.fqdn} in zone {zone}")
        key = f"TSIG key {self._key.name.to_text(omit_final_dot=True)!r}" if self._key else (
            "an unsigned update")
        if rcode == dns.rcode.REFUSED:
            raise errors.CredentialsRejected(
                f"{where}: its update policy does not allow {key} to change this name")
        if rcode in (dns.rcode.NOTAUTH, dns.rcode.NOTZONE):
            raise errors.ConfigError(f"{where}: it is not the primary server of that zone")
        raise errors.TemporaryError(where)

    def _send(self, update: dns.update.UpdateMessage, *, what: str) -> dns.message.Message:
        target = f"nameserver {self.nameserver}"
        key_name = self._key.name.to_text(omit_final_dot=True) if self._key else ""
        try:
            if self._tcp:
                return dns.query.tcp(update, self.nameserver.host, port=self.nameserver.port,
                                     timeout=self._timeout)
            response, _ = dns.query.udp_with_fallback(
                update, self.nameserver.host, port=self.nameserver.port, timeout=self._timeout)
            return response
        except dns.tsig.PeerBadSignature as err:
            raise errors.CredentialsRejected(
                f"{target} rejected the TSIG signature of key {key_name!r} while {what} (BADSIG):"
                f" the secret in {self._secret_source} does not match the server's") from err
        except dns.tsig.PeerBadKey as err:
            raise errors.CredentialsRejected(
                f"{target} does not know TSIG key {key_name!r} with algorithm"
                f" {self._key.algorithm.to_text(omit_final_dot=True) if self._key else ''}"
                f" (BADKEY) while {what}; check tsigKeyName and tsigAlgorithm") from err
        except dns.tsig.PeerBadTime as err:
            raise errors.TemporaryError(
                f"{target} rejected the TSIG time of key {key_name!r} (BADTIME) while {what}:"
                " this host's clock and the server's differ by more than 5 minutes") from err
        except (dns.tsig.BadSignature, dns.tsig.BadKey) as err:
            raise errors.CredentialsRejected(
                f"the answer of {target} while {what} is not signed with TSIG key {key_name!r}:"
                f" the secret in {self._secret_source} does not match the server's") from err
        except dns.exception.Timeout as err:
            raise errors.TemporaryError(
                f"{target} did not answer within {self._timeout:g}s while {what}") from err
        except (OSError, dns.exception.DNSException) as err:
            raise errors.TemporaryError(f"{target} failed while {what}: {err}") from err
