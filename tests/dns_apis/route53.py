"""Route 53 as moto serves it (`moto[server]`): a real HTTP endpoint boto3 talks to.

moto keeps its state per process, so each `Route53Server` creates its own
hosted zone (named per test) and reads records back through boto3, the same
client the provider uses.
"""

from __future__ import annotations

import boto3
import requests
from moto.server import ThreadedMotoServer

from tests.pebble import free_port

REGION = "us-east-1"
ACCESS_KEY_ID = "AKIDCERTCTLTEST"
SECRET_ACCESS_KEY = "certctl-test-secret"


class Route53Server:
    def __init__(self, *, zone: str) -> None:
        self.port = free_port()
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._moto.start()
        # moto's state is per process: start from an empty account, like a fresh one.
        requests.post(f"{self.base_url}/moto-api/reset", timeout=5).raise_for_status()
        self.client = boto3.session.Session(
            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION).client("route53", endpoint_url=self.base_url)
        created = self.client.create_hosted_zone(Name=zone, CallerReference=f"certctl-{zone}")
        self.zone_id = created["HostedZone"]["Id"].rsplit("/", 1)[-1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def txt_values(self, fqdn: str) -> list[str]:
        wanted = fqdn.rstrip(".").lower() + "."
        found = self.client.list_resource_record_sets(HostedZoneId=self.zone_id)
        return [record["Value"].strip('"')
                for record_set in found["ResourceRecordSets"]
                if record_set["Name"].lower() == wanted and record_set["Type"] == "TXT"
                for record in record_set.get("ResourceRecords", [])]

    def stop(self) -> None:
        self._moto.stop()
