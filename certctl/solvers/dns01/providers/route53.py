"""`dns01.route53`: TXT records in AWS Route 53, with boto3.

Configured as in cert-manager:

    route53:
      region: eu-west-1                      # optional; us-east-1 otherwise
      accessKeyID: AKIA...                   # or accessKeyIDSecretRef: {name, key}
      secretAccessKeySecretRef: {name: route53, key: secret-access-key}
      role: arn:aws:iam::123456789012:role/dns01   # optional: assumed with STS
      hostedZoneID: Z2ABCDEFGHIJKL           # optional: skips the zone lookup

Without an access key, boto3's default chain (environment, shared files,
instance or pod identity) is used, but only where ambient credentials are
allowed (ClusterIssuers, by default), as in cert-manager.

Route 53 keeps all TXT values of a name in one record set, so adding or
removing our value rewrites the set: read it, UPSERT it with our value added
or removed, or DELETE it (with exactly the values read, which Route 53
refuses if the set changed meanwhile) when ours was the last. Rewrites of
one name are serialised within the process, so the apex and wildcard
challenges of one order, solved concurrently, cannot drop each other's value.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import boto3
import botocore.config
import botocore.exceptions

from certctl.solvers.dns01 import errors
from certctl.solvers.dns01.config import ProviderConfig
from certctl.solvers.dns01.provider import ProviderContext, TxtRecord

if TYPE_CHECKING:
    from mypy_boto3_route53.client import Route53Client
    from mypy_boto3_route53.type_defs import ChangeTypeDef, ResourceRecordSetOutputTypeDef

# botocore logs every request and response at DEBUG, headers and bodies included: the
# Authorization header names the access key ID (which may come from a Secret) and STS
# answers carry the assumed role's SecretAccessKey and SessionToken. `certctl
# --log-level debug` must never print credentials, so boto logs from INFO up.
for _library in ("botocore", "boto3"):
    logging.getLogger(_library).setLevel(logging.INFO)

TTL: Final = 10
DEFAULT_REGION: Final = "us-east-1"
CHANGE_ATTEMPTS: Final = 5
_REJECTED_CODES: Final = frozenset({
    "AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "UnrecognizedClientException", "InvalidSignatureException", "ExpiredToken",
    "ExpiredTokenException", "AuthFailure",
})
_TEMPORARY_CODES: Final = frozenset({
    "Throttling", "ThrottlingException", "PriorRequestNotComplete", "ServiceUnavailable",
    "InternalFailure", "RequestTimeout",
})


def build(*, config: ProviderConfig, context: ProviderContext) -> Route53Provider:
    config.check_fields(
        known=("accessKeyID", "accessKeyIDSecretRef", "secretAccessKeySecretRef", "role",
               "hostedZoneID", "region"),
        unsupported=("auth",))
    access_key_id = config.optional_str("accessKeyID")
    access_key_ref = config.secret_ref("accessKeyIDSecretRef")
    secret_key_ref = config.secret_ref("secretAccessKeySecretRef")
    if access_key_id and access_key_ref is not None:
        raise config.fail("accessKeyIDSecretRef", "set either accessKeyID or"
                          " accessKeyIDSecretRef, not both")
    if access_key_ref is not None:
        access_key_id = context.secrets.read(access_key_ref,
                                             field=config.field("accessKeyIDSecretRef"))
    secret_access_key: str | None = None
    if access_key_id or secret_key_ref is not None:
        if secret_key_ref is None:
            raise config.fail("secretAccessKeySecretRef", "is required with an access key ID")
        if not access_key_id:
            raise config.fail("accessKeyID", "is required with secretAccessKeySecretRef"
                              " (or accessKeyIDSecretRef)")
        secret_access_key = context.secrets.read(
            secret_key_ref, field=config.field("secretAccessKeySecretRef"))
    elif not context.allow_ambient_credentials:
        raise config.fail(None, "no credentials: set accessKeyID (or accessKeyIDSecretRef) and"
                          " secretAccessKeySecretRef; credentials from the environment are only"
                          " used for ClusterIssuers")
    region = config.optional_str("region") or DEFAULT_REGION
    client_config = botocore.config.Config(
        connect_timeout=context.timeout, read_timeout=context.timeout,
        retries={"max_attempts": 2, "mode": "standard"}, user_agent_extra="certctl-dns01")
    session = boto3.session.Session(region_name=region, aws_access_key_id=access_key_id,
                                    aws_secret_access_key=secret_access_key)
    role = config.optional_str("role")
    if role:
        session = _assumed_role(session=session, role=role, region=region,
                                endpoint=context.api_endpoints.get("sts"), config=client_config)
    client = session.client("route53", endpoint_url=context.api_endpoints.get("route53"),
                            config=client_config)
    return Route53Provider(client=client, hosted_zone_id=config.optional_str("hostedZoneID"))


def _assumed_role(
    *,
    session: boto3.session.Session,
    role: str,
    region: str,
    endpoint: str | None,
    config: botocore.config.Config,
) -> boto3.session.Session:
    """A session with the role's temporary credentials; they last one hour, longer than
    any challenge, and a new provider (with new ones) is built for each challenge."""
    sts = session.client("sts", endpoint_url=endpoint, config=config)
    with _aws_errors(f"assuming role {role}"):
        assumed = sts.assume_role(RoleArn=role, RoleSessionName="certctl-dns01")["Credentials"]
    return boto3.session.Session(
        region_name=region,
        aws_access_key_id=assumed["AccessKeyId"],
        aws_secret_access_key=assumed["SecretAccessKey"],
        aws_session_token=assumed["SessionToken"],
    )


class Route53Provider:
    def __init__(self, *, client: Route53Client, hosted_zone_id: str | None) -> None:
        self._client = client
        self._hosted_zone_id = hosted_zone_id

    def __repr__(self) -> str:
        return f"<route53 provider zone {self._hosted_zone_id or '(looked up)'}>"

    def present(self, *, record: TxtRecord) -> None:
        self._change(record=record, add=True)

    def cleanup(self, *, record: TxtRecord) -> None:
        self._change(record=record, add=False)

    def _change(self, *, record: TxtRecord, add: bool) -> None:
        zone_id = self._zone_id(record)
        with _NAME_LOCKS.holding((zone_id, record.fqdn)):
            self._rewrite(zone_id=zone_id, record=record, add=add)

    def _rewrite(self, *, zone_id: str, record: TxtRecord, add: bool) -> None:
        quoted = f'"{record.value}"'
        what = f"{'adding to' if add else 'removing from'} TXT {record.fqdn}"
        for attempt in range(CHANGE_ATTEMPTS):
            current = self._record_set(zone_id=zone_id, fqdn=record.fqdn)
            values = [r["Value"] for r in current.get("ResourceRecords", [])] if current else []
            if (quoted in values) == add:
                return  # already as wanted
            wanted = [*values, quoted] if add else [v for v in values if v != quoted]
            change: ChangeTypeDef
            if wanted:
                change = {"Action": "UPSERT", "ResourceRecordSet": {
                    "Name": record.fqdn, "Type": "TXT",
                    "TTL": current.get("TTL", TTL) if current else TTL,
                    "ResourceRecords": [{"Value": v} for v in wanted]}}
            else:
                assert current is not None
                change = {"Action": "DELETE", "ResourceRecordSet": current}
            changes = [change]
            with _aws_errors(what):
                try:
                    self._client.change_resource_record_sets(
                        HostedZoneId=zone_id,
                        ChangeBatch={"Comment": "certctl DNS-01", "Changes": changes})
                    return
                except botocore.exceptions.ClientError as err:
                    # The set changed since it was read: read it again, unless out of tries.
                    if _error_code(err) != "InvalidChangeBatch" or attempt + 1 == CHANGE_ATTEMPTS:
                        raise
            time.sleep(0.1 * (attempt + 1))

    def _zone_id(self, record: TxtRecord) -> str:
        if self._hosted_zone_id:
            return self._hosted_zone_id
        with _aws_errors(f"looking up the hosted zone {record.zone}"):
            found = self._client.list_hosted_zones_by_name(DNSName=record.zone, MaxItems="10")
        for zone in found.get("HostedZones", []):
            if zone["Name"].lower() == record.zone and not zone.get("Config", {}).get(
                    "PrivateZone", False):
                return zone["Id"].rsplit("/", 1)[-1]
        raise errors.ConfigError(
            f"Route 53: no public hosted zone {record.zone} for {record.fqdn}; set hostedZoneID"
            " or check the credentials' account")

    def _record_set(self, *, zone_id: str, fqdn: str) -> ResourceRecordSetOutputTypeDef | None:
        with _aws_errors(f"reading TXT {fqdn}"):
            found = self._client.list_resource_record_sets(
                HostedZoneId=zone_id, StartRecordName=fqdn, StartRecordType="TXT",
                MaxItems="1")
        for record_set in found.get("ResourceRecordSets", []):
            if record_set["Name"].lower() == fqdn and record_set["Type"] == "TXT":
                return record_set
        return None


class _KeyedLocks:
    """One lock per key, made on first use (a handful of names per process)."""

    def __init__(self) -> None:
        self._locks: dict[object, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def holding(self, key: object) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield


_NAME_LOCKS = _KeyedLocks()


@contextlib.contextmanager
def _aws_errors(what: str) -> Iterator[None]:
    """Turns botocore failures into DNS-01 errors naming the operation."""
    prefix = f"Route 53: {what}"
    try:
        yield
    except botocore.exceptions.ClientError as err:
        code = _error_code(err)
        message = f"{prefix}: {code}: {err.response.get('Error', {}).get('Message', '')}"
        if code in _REJECTED_CODES:
            raise errors.CredentialsRejected(message) from err
        if code in _TEMPORARY_CODES:
            raise errors.TemporaryError(message) from err
        raise errors.ConfigError(message) from err
    except (botocore.exceptions.NoCredentialsError,
            botocore.exceptions.PartialCredentialsError) as err:
        raise errors.ConfigError(f"{prefix}: no AWS credentials found") from err
    except botocore.exceptions.BotoCoreError as err:
        raise errors.TemporaryError(f"{prefix}: {err}") from err


def _error_code(err: botocore.exceptions.ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))
