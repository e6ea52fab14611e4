"""An acme-dns server (https://github.com/joohoi/acme-dns): its HTTP API and its DNS answers.

HTTP as acme-dns documents it: `POST /register` creates an account
(`username`, `password`, `subdomain`, `fulldomain`, `allowfrom`), `POST
/update` with `X-Api-User`/`X-Api-Key` sets a TXT value (exactly 43
characters, like a real DNS-01 value) and answers `{"txt": ...}`; wrong
credentials get 401 `{"error": "forbidden"}`. Like acme-dns, each subdomain
keeps its two most recent values. A UDP DNS server answers TXT queries for
`<subdomain>.<domain>` from the same store, as acme-dns' own DNS server does.
"""

from __future__ import annotations

import secrets
import socket
import threading
import uuid
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

from tests.dns_apis.http_app import LocalApiServer, Request
from tests.dns_apis.records import RecordStore

VALUES_KEPT = 2
TXT_LENGTH = 43


class AcmeDnsServer:
    def __init__(self, *, domain: str = "auth.acme-dns.test") -> None:
        self.domain = domain
        self.store = RecordStore(zones=(domain,))
        self._accounts: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self.server = LocalApiServer(handler=self.handle)
        self._dns_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._dns_socket.bind(("127.0.0.1", 0))
        self._dns_socket.settimeout(0.2)
        self._stopping = threading.Event()
        self._dns_thread = threading.Thread(target=self._serve_dns, daemon=True)
        self._dns_thread.start()

    @property
    def base_url(self) -> str:
        return self.server.url

    @property
    def dns_port(self) -> int:
        port: int = self._dns_socket.getsockname()[1]
        return port

    def stop(self) -> None:
        self._stopping.set()
        self._dns_thread.join(2)
        self._dns_socket.close()
        self.server.stop()

    # --- HTTP ----------------------------------------------------------------

    def handle(self, request: Request) -> tuple[int, Any]:
        if request.method == "POST" and request.path == "/register":
            subdomain, username = str(uuid.uuid4()), str(uuid.uuid4())
            password = secrets.token_urlsafe(30)
            with self._lock:
                self._accounts[username] = {"password": password, "subdomain": subdomain}
            return 201, {"username": username, "password": password,
                         "fulldomain": f"{subdomain}.{self.domain}", "subdomain": subdomain,
                         "allowfrom": []}
        if request.method == "POST" and request.path == "/update":
            with self._lock:
                account = self._accounts.get(request.headers.get("x-api-user", ""))
            if account is None or account["password"] != request.headers.get("x-api-key"):
                return 401, {"error": "forbidden"}
            body = request.body or {}
            if body.get("subdomain") != account["subdomain"]:
                return 401, {"error": "forbidden"}
            txt = body.get("txt")
            if not isinstance(txt, str) or len(txt) != TXT_LENGTH:
                return 400, {"error": "bad_txt"}
            name = f"{account['subdomain']}.{self.domain}"
            with self._lock:
                current = self.store.find(name=name, type="TXT")
                for old in current[: max(0, len(current) - VALUES_KEPT + 1)]:
                    self.store.remove(old.id)
                self.store.add(zone=self.domain, name=name, type="TXT", content=txt, ttl=1)
            return 200, {"txt": txt}
        return 404, {"error": "not_found"}

    # --- DNS -----------------------------------------------------------------

    def _serve_dns(self) -> None:
        while not self._stopping.is_set():
            try:
                wire, peer = self._dns_socket.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            try:
                query = dns.message.from_wire(wire)
            except Exception:  # garbage in, nothing out, like a real server
                continue
            self._dns_socket.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        apex = dns.name.from_text(self.domain)
        if not question.name.is_subdomain(apex):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        values = self.store.txt_values(question.name.to_text())
        if question.rdtype == dns.rdatatype.TXT and values:
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, dns.rdatatype.TXT)
            for value in values:
                rrset.add(dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT,
                                                  [value.encode()]), ttl=1)
            response.answer.append(rrset)
        return response
