"""A typed, resumable, thread-safe wrapper over the `acme` library's `ClientV2`.

Every step of an order is one call taking URLs the caller persists (in the
Order and Challenge status), so a restarted controller resumes an order
instead of starting over. Results are small frozen dataclasses built from the
library's typed messages, and every failure is one of the types in
`certctl.issuers.acme.errors`.

Concurrency: `acme.client.ClientNetwork` is not safe to share between
threads (its nonce pool does check-then-pop, `register` temporarily clears
the account it signs with, and `requests.Session` is not documented as
thread-safe). An `AcmeClient` is shared by all reconciler threads, and gives
each thread its own `ClientNetwork` (own keep-alive connection pool and nonce
pool). The directory, account key and account URI are shared read-only;
`register()` swaps the account under a lock.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import importlib.metadata
import ssl
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import requests
import requests.utils
from acme import challenges, crypto_util, messages
from acme import client as acme_client
from acme import errors as acme_errors
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from josepy import b64, interfaces, json_util, jwa, jwk
from josepy import errors as jose_errors

import certctl
from certctl.issuers.acme import ari, errors
from certctl.issuers.acme.session import AcmeSession, CABundleAdapter

_T = TypeVar("_T")

PEM_CHAIN_CONTENT_TYPE = "application/pem-certificate-chain"
_REQUIRED_DIRECTORY_KEYS = ("newNonce", "newAccount", "newOrder")
# Challenges seen in fetched authorizations, kept so answering one needs no fetch of its
# own; bounded, oldest dropped first (a dropped one is fetched when answered).
_KNOWN_CHALLENGES_LIMIT = 4096
_EC_ALGORITHMS: Mapping[str, jwa.JWASignature] = {
    "secp256r1": jwa.ES256,
    "secp384r1": jwa.ES384,
    "secp521r1": jwa.ES512,
}


@functools.cache
def user_agent(*, component: str | None = None) -> str:
    """The User-Agent header of every ACME request, e.g.
    ``certctl/0.1.0 (controller) acme-python/5.9.0 python-requests/2.32.3``.

    RFC 8555 section 6.1: clients MUST send one and SHOULD name the ACME
    software and the HTTP client with their versions; current CAs (Pebble
    since 2.10) refuse requests without it. `component` says which certctl
    command is asking.
    """
    detail = f" ({component})" if component else ""
    return (f"certctl/{certctl.version()}{detail} "
            f"acme-python/{importlib.metadata.version('acme')}"
            f" python-requests/{requests.__version__}")


@dataclass(frozen=True, order=True)
class Identifier:
    """An ACME identifier: `type` is ``dns`` or ``ip``."""

    type: str
    value: str


@dataclass(frozen=True, kw_only=True)
class ExternalAccountKey:
    """External account binding credentials from the CA (ZeroSSL, Google, a private CA)."""

    key_id: str
    hmac_key: str  # base64url, as CAs hand it out

    def __repr__(self) -> str:  # never show the HMAC key in logs or tracebacks
        return f"ExternalAccountKey(key_id={self.key_id!r})"


@dataclass(frozen=True)
class Problem:
    """A problem document attached to an order or challenge (not raised)."""

    typ: str
    detail: str


@dataclass(frozen=True)
class ChallengeState:
    """One challenge. `token` is None only for challenge types without one."""

    url: str
    type: str
    status: str
    token: str | None
    error: Problem | None
    validated: datetime.datetime | None
    retry_after: datetime.datetime | None


@dataclass(frozen=True)
class AuthorizationState:
    """One authorization; `identifier.value` has no ``*.`` prefix even when `wildcard`."""

    url: str
    status: str
    identifier: Identifier
    wildcard: bool
    expires: datetime.datetime | None
    challenges: tuple[ChallengeState, ...]
    retry_after: datetime.datetime | None


@dataclass(frozen=True)
class OrderState:
    """One order. Status is ``pending``, ``ready``, ``processing``, ``valid`` or ``invalid``.

    Identifiers and authorization URLs are sorted: servers (Pebble) return them
    in no stable order, and equal orders should compare equal.
    """

    url: str
    status: str
    identifiers: tuple[Identifier, ...]
    authorization_urls: tuple[str, ...]
    finalize_url: str
    certificate_url: str | None
    expires: datetime.datetime | None
    error: Problem | None
    retry_after: datetime.datetime | None


@dataclass(frozen=True, kw_only=True)
class AcmeExchange:
    """One HTTP request to the ACME server and its answer, as `on_response` sees it
    (metrics): plain values, so a client in another process can report it."""

    method: str
    url: str
    status: int
    seconds: float
    user_agent: str


@dataclass(frozen=True, kw_only=True)
class RenewalInfo:
    """A CA's suggested renewal window for one certificate (RFC 9773).

    `retry_after` is how long the CA asks the client to wait before asking
    again (its Retry-After header), None when it said nothing; a duration
    rather than a time so that the caller's clock, not this one, places it.
    """

    cert_id: str
    window_start: datetime.datetime
    window_end: datetime.datetime
    explanation_url: str | None
    retry_after: datetime.timedelta | None


class _NewOrder(messages.NewOrder):
    """newOrder with RFC 9773's `replaces`: the CertID of the certificate it renews.

    The `acme` library's NewOrder has `profile` but not (yet) `replaces`.
    """

    replaces: str | None = json_util.field("replaces", omitempty=True)


class _ThreadState(threading.local):
    """Per-thread `ClientNetwork` and the last HTTP response it received."""

    client: acme_client.ClientV2 | None = None
    last_response: requests.Response | None = None


class ChallengeResponses:
    """What an account answers its challenges with: made from its key, no request."""

    def __init__(self, account_key: jwk.JWK) -> None:
        self._jwk = account_key

    def key_authorization(self, token: str) -> str:
        """The HTTP-01 response body for `token`: ``token.<account key thumbprint>``."""
        return str(challenges.HTTP01(token=b64.b64decode(token)).key_authorization(self._jwk))

    def dns01_txt_value(self, token: str) -> str:
        """The TXT record value for `token` at ``_acme-challenge.<domain>``."""
        return str(challenges.DNS01(token=b64.b64decode(token)).validation(self._jwk))


class AccountClient(Protocol):
    """One ACME account on one ACME server, as the reconcilers use it: `AcmeClient` in
    this process, or `client_process.ProcessAcmeClient` running one in a helper process.
    The methods are `AcmeClient`'s, which documents them."""

    @property
    def account_uri(self) -> str | None: ...

    def close(self) -> None: ...

    def register(self, *, email: str | None, terms_agreed: bool = True,
                 external_account: ExternalAccountKey | None = None) -> str: ...

    def profiles(self) -> dict[str, str]: ...

    def offers_renewal_info(self) -> bool: ...

    def renewal_info(self, *, certificate: x509.Certificate) -> RenewalInfo: ...

    def new_order(self, *, csr_pem: bytes, profile: str | None = None,
                  replaces: str | None = None) -> OrderState: ...

    def get_order(self, url: str) -> OrderState: ...

    def get_authorization(self, url: str) -> AuthorizationState: ...

    def get_challenge(self, url: str) -> ChallengeState: ...

    def answer_challenge(self, url: str) -> ChallengeState: ...

    def key_authorization(self, token: str) -> str: ...

    def dns01_txt_value(self, token: str) -> str: ...

    def finalize(self, *, order_url: str, finalize_url: str, csr_pem: bytes) -> OrderState: ...

    def download_certificate(self, *, certificate_url: str,
                             preferred_chain: str | None) -> str: ...


class AcmeClient:
    """One ACME account on one ACME server, shareable by all threads.

    Construction does no I/O; the directory is fetched on first use (and
    again after a failed fetch). Pass `account_uri` when the account is
    already known (from the issuer's status) to skip `register()`.
    `ca_bundle_pem` replaces the system trust store for the ACME server's TLS
    certificate, as cert-manager's `caBundle` does. `component` names the
    certctl command in the User-Agent (see `user_agent()`).
    """

    def __init__(
        self,
        *,
        directory_url: str,
        account_key_pem: bytes,
        account_uri: str | None = None,
        ca_bundle_pem: bytes | None = None,
        skip_tls_verify: bool = False,
        component: str | None = None,
        timeout: int = 30,
        bad_nonce_attempts: int = 3,
        on_response: Callable[[AcmeExchange], None] | None = None,
    ) -> None:
        self.directory_url = directory_url
        self._on_response = on_response  # sees every HTTP response (metrics)
        self._jwk, self._alg = load_account_key(account_key_pem)
        self._responses = ChallengeResponses(self._jwk)
        self._ssl_context = (
            _ssl_context(ca_bundle_pem) if ca_bundle_pem and not skip_tls_verify else None
        )
        self._skip_tls_verify = skip_tls_verify
        self.user_agent = user_agent(component=component)
        self._timeout = timeout
        self._bad_nonce_attempts = max(1, bad_nonce_attempts)
        self._lock = threading.Lock()
        self._directory: messages.Directory | None = None
        self._account: messages.RegistrationResource | None = (
            messages.RegistrationResource(uri=account_uri, body=messages.Registration())
            if account_uri
            else None
        )
        self._thread = _ThreadState()
        self._networks: weakref.WeakSet[acme_client.ClientNetwork] = weakref.WeakSet()
        self._known_challenges: dict[str, messages.ChallengeBody] = {}  # by URL, under _lock

    @property
    def account_uri(self) -> str | None:
        account = self._account
        return account.uri if account is not None else None

    def close(self) -> None:
        """Close the keep-alive connections of every thread; the client stays usable."""
        with self._lock:
            networks = list(self._networks)
        for network in networks:
            network.session.close()

    def __enter__(self) -> AcmeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- account -----------------------------------------------------------

    def register(
        self,
        *,
        email: str | None,
        terms_agreed: bool = True,
        external_account: ExternalAccountKey | None = None,
    ) -> str:
        """Create the account, or find the existing one for this key; return its URI.

        Idempotent: the server answers an existing key with its account URL
        (200 + Location), which is reused as is; the contact of an existing
        account is not updated. Call again after `AccountDoesNotExist`.
        `external_account` binds a new account to the CA's external account
        (RFC 8555 section 7.3.4); an HMAC key that is not base64url is an
        `AcmeConfigError` naming the key ID only.
        """
        binding = None
        if external_account is not None:
            try:
                binding = messages.ExternalAccountBinding.from_data(
                    account_public_key=self._jwk.public_key(),
                    kid=external_account.key_id,
                    hmac_key=external_account.hmac_key,
                    directory=self._directory_now(),
                )
            except (ValueError, TypeError) as error:
                raise errors.AcmeConfigError(
                    f"the HMAC key of external account {external_account.key_id!r} is not"
                    " base64url-encoded"
                ) from error
        registration = messages.NewRegistration.from_data(
            email=email, terms_of_service_agreed=terms_agreed,
            external_account_binding=binding,
        )
        client = self._client(anonymous=True)

        def send() -> messages.RegistrationResource:
            try:
                return client.new_account(registration)
            except acme_errors.ConflictError as existing:
                return messages.RegistrationResource(
                    uri=existing.location, body=messages.Registration()
                )

        account = self._request(self._directory_now()["newAccount"], send)
        with self._lock:
            self._account = account
        return str(account.uri)

    def profiles(self) -> dict[str, str]:
        """The certificate profiles the directory offers (name -> description); often none."""
        return dict(getattr(self._directory_now().meta, "profiles", None) or {})

    def offers_renewal_info(self) -> bool:
        """Whether the directory has ARI's `renewalInfo` (RFC 9773); Pebble 2.4 has not."""
        return _renewal_info_url(self._directory_now()) is not None

    def renewal_info(self, *, certificate: x509.Certificate) -> RenewalInfo:
        """The CA's suggested renewal window for `certificate` (one unauthenticated GET).

        Raises `AcmeConfigError` when the directory offers no `renewalInfo`
        or the certificate has no Authority Key Identifier to name it by,
        `AcmeProtocolError` for an answer that is not a valid window (RFC
        9773 section 4.2: an end at or before the start is invalid), and the
        wrapper's usual errors for problems and unreachable servers.
        """
        base = _renewal_info_url(self._directory_now())
        if base is None:
            raise errors.AcmeConfigError(
                f"ACME server {self.directory_url} offers no renewalInfo (ARI)")
        identifier = ari.cert_id(certificate)
        if identifier is None:
            raise errors.AcmeConfigError(
                "the certificate has no Authority Key Identifier: ARI cannot name it")
        url = f"{base.rstrip('/')}/{identifier}"
        network = self._client(anonymous=True).net
        response: requests.Response = self._request(
            url, lambda: network.get(url, content_type="application/json"))
        body = self._parse(url, lambda: messages.RenewalInfo.from_json(response.json()))
        window = body.suggested_window
        if window.start is None or window.end is None or window.end <= window.start:
            raise errors.AcmeProtocolError(
                f"ACME server {url} suggested an invalid renewal window "
                f"({window.start} to {window.end})")
        explanation = self._parse(url, lambda: response.json().get("explanationURL"))
        retry_after = _retry_after(response)
        return RenewalInfo(
            cert_id=identifier,
            window_start=_aware(window.start),
            window_end=_aware(window.end),
            explanation_url=explanation if isinstance(explanation, str) else None,
            retry_after=(retry_after - datetime.datetime.now(datetime.UTC)
                         if retry_after is not None else None),
        )

    # --- orders ------------------------------------------------------------

    def new_order(
        self, *, csr_pem: bytes, profile: str | None = None, replaces: str | None = None
    ) -> OrderState:
        """Create an order for the DNS names and IPs of the CSR (its CN first, like certbot).

        `profile` must be one the directory advertises, else `AcmeConfigError`
        (servers without profile support would silently ignore it).
        `replaces` is the ARI CertID of the certificate this order renews
        (RFC 9773 section 5); a CA may refuse it with a problem (Pebble:
        alreadyReplaced, or unauthorized when another account holds the old
        certificate), which the caller answers by ordering without it.
        """
        csr = x509.load_pem_x509_csr(csr_pem)
        dns_names, ip_addresses = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
        identifiers = [
            messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name) for name in dns_names
        ] + [messages.Identifier(typ=messages.IDENTIFIER_IP, value=ip) for ip in ip_addresses]
        directory = self._directory_now()
        fields: dict[str, Any] = {"identifiers": identifiers}
        if profile is not None:
            offered = self.profiles()
            if profile not in offered:
                raise errors.AcmeConfigError(
                    f"ACME server {self.directory_url} does not offer profile {profile!r}"
                    f" (offers: {', '.join(sorted(offered)) or 'none'})"
                )
            fields["profile"] = profile
        if replaces is not None:
            fields["replaces"] = replaces
        response = self._post(directory["newOrder"], _NewOrder(**fields))
        location = response.headers.get("Location")
        if not location:
            raise errors.AcmeProtocolError("newOrder response has no Location header")
        return _order_state(
            self._parse(location, lambda: messages.Order.from_json(response.json())),
            url=location,
            retry_after=_retry_after(response),
        )

    def get_order(self, url: str) -> OrderState:
        response = self._post(url, None)
        return _order_state(
            self._parse(url, lambda: messages.Order.from_json(response.json())),
            url=url,
            retry_after=_retry_after(response),
        )

    def get_authorization(self, url: str) -> AuthorizationState:
        response = self._post(url, None)
        body = self._parse(url, lambda: messages.Authorization.from_json(response.json()))
        self._remember_challenges(body.challenges)
        return AuthorizationState(
            url=url,
            status=_status(body.status),
            identifier=_identifier(body.identifier),
            wildcard=bool(body.wildcard),
            expires=body.expires,
            challenges=tuple(_challenge_state(c, retry_after=None) for c in body.challenges),
            retry_after=_retry_after(response),
        )

    def get_challenge(self, url: str) -> ChallengeState:
        response = self._post(url, None)
        return _challenge_state(
            self._parse(url, lambda: messages.ChallengeBody.from_json(response.json())),
            retry_after=_retry_after(response),
        )

    def answer_challenge(self, url: str) -> ChallengeState:
        """Tell the server the challenge is ready to be validated.

        The library's typed response is built from the challenge as this
        client saw it in its authorization (`get_authorization`); a challenge
        it has not seen (after a restart) is fetched first, one more request.
        Only its type and token are used, which never change. Only a pending
        challenge can be answered: Pebble refuses one already answered as
        malformed ("Cannot update challenge with status valid, only status
        pending"). So a challenge fetched here that is no longer pending (a
        restarted certctl answering again what it answered before) is not
        answered: its current state is returned, as Boulder answers. One this
        client saw pending is answered straight away; its caller remembers it
        answered (the Challenge reconciler does).
        """
        with self._lock:
            challenge_body = self._known_challenges.pop(url, None)
        if challenge_body is None:
            current = self._post(url, None)
            challenge_body = self._parse(
                url, lambda: messages.ChallengeBody.from_json(current.json()))
            if _status(challenge_body.status) != "pending":
                return _challenge_state(challenge_body, retry_after=_retry_after(current))
        response: challenges.ChallengeResponse
        if isinstance(challenge_body.chall, challenges.KeyAuthorizationChallenge):
            response = challenge_body.response(self._jwk)
        elif challenge_body.chall.to_partial_json().get("type") in ("tls-alpn-01",
                                                                       "dns-account-01"):
            # certbot's acme no longer knows TLS-ALPN-01 (RFC 8737) and does not know
            # dns-account-01 (draft-ietf-acme-dns-account-label); their answer is the
            # empty object every ACME answer is (RFC 8555 section 7.5.1), which this class
            # sends (a field-less ChallengeResponse is falsy: acme would POST-as-GET it).
            token = str(challenge_body.chall.to_partial_json().get("token", ""))
            response = challenges.KeyAuthorizationChallengeResponse(
                key_authorization=self.key_authorization(token))
        else:
            raise errors.AcmeProtocolError(
                f"cannot answer challenge {url}: unsupported type"
                f" {challenge_body.chall.to_partial_json().get('type')!r}"
            )
        client = self._client()
        answered = self._request(url, lambda: client.answer_challenge(challenge_body, response))
        return _challenge_state(answered.body, retry_after=_retry_after(self._thread.last_response))

    def _remember_challenges(self, bodies: Iterable[messages.ChallengeBody]) -> None:
        with self._lock:
            for body in bodies:
                self._known_challenges[body.uri] = body
            while len(self._known_challenges) > _KNOWN_CHALLENGES_LIMIT:
                del self._known_challenges[next(iter(self._known_challenges))]

    def key_authorization(self, token: str) -> str:
        return self._responses.key_authorization(token)

    def dns01_txt_value(self, token: str) -> str:
        return self._responses.dns01_txt_value(token)

    def finalize(self, *, order_url: str, finalize_url: str, csr_pem: bytes) -> OrderState:
        """Submit the CSR; return the order as it is now (often ``processing`` or ``valid``).

        orderNotReady is not raised: the current order is fetched and
        returned instead, so the caller sees why (``pending``: authorizations
        not valid yet; ``processing``/``valid``: an earlier finalize, e.g.
        before a restart, already went through).
        """
        request = messages.CertificateRequest(csr=x509.load_pem_x509_csr(csr_pem))
        try:
            response = self._post(finalize_url, request)
        except errors.OrderNotReady:
            return self.get_order(order_url)
        return _order_state(
            self._parse(finalize_url, lambda: messages.Order.from_json(response.json())),
            url=order_url,
            retry_after=_retry_after(response),
        )

    def download_certificate(self, *, certificate_url: str, preferred_chain: str | None) -> str:
        """Return the full chain PEM (leaf first).

        With `preferred_chain`, the default and then each ``Link: rel=alternate``
        chain is tried; the first whose topmost certificate was issued by a CA
        with that Common Name wins (cert-manager's and certbot's rule). No
        match: the default chain.
        """
        default_chain, default_top_issuer, alternates = self._download_chain(certificate_url)
        if preferred_chain is None or default_top_issuer == preferred_chain:
            return default_chain
        for alternate_url in alternates:
            chain, top_issuer, _ = self._download_chain(alternate_url)
            if top_issuer == preferred_chain:
                return chain
        return default_chain

    # --- plumbing ----------------------------------------------------------

    def _download_chain(self, url: str) -> tuple[str, str | None, list[str]]:
        """The chain PEM, its topmost issuer CN and the alternate chain URLs."""
        response = self._post(
            url,
            None,
            headers={
                "Content-Type": acme_client.ClientNetwork.JOSE_CONTENT_TYPE,
                "Accept": PEM_CHAIN_CONTENT_TYPE,
            },
        )
        links = requests.utils.parse_header_links(response.headers.get("Link", ""))
        alternates = [
            link["url"] for link in links if link.get("rel") == "alternate" and link.get("url")
        ]
        chain = self._parse(url, lambda: response.content.decode("ascii"))
        return chain, self._parse(url, lambda: _top_issuer_cn(chain)), alternates

    def _post(
        self, url: str, obj: interfaces.JSONDeSerializable | None, **kwargs: Any
    ) -> requests.Response:
        """POST a JWS (or POST-as-GET when `obj` is None) signed with the account's kid."""
        client = self._client()
        new_nonce_url = client.directory["newNonce"]
        response: requests.Response = self._request(
            url, lambda: client.net.post(url, obj, new_nonce_url=new_nonce_url, **kwargs)
        )
        return response

    def _request(self, url: str, send: Callable[[], _T]) -> _T:
        """Run one request, retrying badNonce, translating every failure to our errors.

        A badNonce is rejected before the server acts on the request, so the
        retry is safe for any request; `send` must issue only one.
        """
        attempt = 1
        while True:
            try:
                with self._translated(url):
                    return send()
            except errors.BadNonce:
                if attempt >= self._bad_nonce_attempts:
                    raise
                attempt += 1

    @contextmanager
    def _translated(self, url: str) -> Iterator[None]:
        try:
            yield
        except messages.Error as problem:
            raise _problem(problem, self._thread.last_response) from problem
        except requests.exceptions.SSLError as error:
            raise errors.AcmeUnreachable(
                f"TLS connection to ACME server {url} failed: {error}", url=url
            ) from error
        # Before RequestException: requests' JSONDecodeError is both.
        except (acme_errors.ClientError, jose_errors.DeserializationError, ValueError) as error:
            if _http_status(error) == 404:
                raise errors.AcmeNotFound(
                    f"ACME server answered 404 for {url}: it does not know it (any more)"
                ) from error
            raise errors.AcmeProtocolError(
                f"unexpected answer from ACME server {url}: {_describe(error)}"
            ) from error
        except requests.RequestException as error:
            raise errors.AcmeUnreachable(
                f"cannot reach ACME server {url}: {error}", url=url
            ) from error

    def _parse(self, url: str, parse: Callable[[], _T]) -> _T:
        """Decode a response body, a malformed one becoming AcmeProtocolError."""
        with self._translated(url):
            return parse()

    def _client(self, *, anonymous: bool = False) -> acme_client.ClientV2:
        """This thread's ClientV2, signing as the current account (or none, to register)."""
        directory = self._directory_now()
        client = self._thread.client
        if client is None:
            network = acme_client.ClientNetwork(
                key=self._jwk,
                alg=self._alg,
                verify_ssl=not self._skip_tls_verify,
                user_agent=self.user_agent,
                timeout=self._timeout,
            )
            network.session = AcmeSession()
            if self._ssl_context is not None:
                network.session.mount("https://", CABundleAdapter(ssl_context=self._ssl_context))
            network.session.hooks["response"].append(self._remember_response)
            self._observe(network)
            client = acme_client.ClientV2(directory, network)
            self._thread.client = client
            with self._lock:
                self._networks.add(network)
        if anonymous:
            client.net.account = None
            return client
        current = self._account
        if current is None:
            raise errors.AccountNotRegistered(
                f"no ACME account for {self.directory_url}: call register() first"
            )
        client.net.account = current
        return client

    def _remember_response(self, response: requests.Response, *_: Any, **__: Any) -> None:
        self._thread.last_response = response

    def _observe(self, network: acme_client.ClientNetwork) -> None:
        on_response = self._on_response
        if on_response is not None:
            network.session.hooks["response"].append(
                lambda response, *_, **__: on_response(_exchange(response)))

    def _directory_now(self) -> messages.Directory:
        """The directory, fetched once; concurrent first callers wait for one fetch."""
        with self._lock:
            if self._directory is None:
                self._directory = self._fetch_directory()
            return self._directory

    def _fetch_directory(self) -> messages.Directory:
        url = self.directory_url
        network = acme_client.ClientNetwork(
            verify_ssl=not self._skip_tls_verify, user_agent=self.user_agent, timeout=self._timeout
        )
        if self._ssl_context is not None:
            network.session.mount("https://", CABundleAdapter(ssl_context=self._ssl_context))
        self._observe(network)
        try:
            with self._translated(url):
                try:
                    response = network.get(url)
                except (acme_errors.ClientError, messages.Error) as error:
                    raise errors.AcmeNotADirectory(
                        f"{url} is not an ACME directory: {_describe(error)}", url=url
                    ) from error
                document = response.json()
                missing = [
                    key
                    for key in _REQUIRED_DIRECTORY_KEYS
                    if not isinstance(document, dict) or key not in document
                ]
                if missing:
                    raise errors.AcmeNotADirectory(
                        f"{url} is not an ACME directory: JSON without {', '.join(missing)}",
                        url=url,
                    )
                return messages.Directory.from_json(document)
        finally:
            network.session.close()


def load_account_key(pem: bytes) -> tuple[jwk.JWK, jwa.JWASignature]:
    """The JWK and JWS algorithm for an ECDSA (P-256/384/521) or RSA account key."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise errors.AcmeConfigError(
            "ACME account key is not an unencrypted PEM private key"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        return jwk.JWKRSA(key=key), jwa.RS256
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _EC_ALGORITHMS:
        return jwk.JWKEC(key=key), _EC_ALGORITHMS[key.curve.name]
    raise errors.AcmeConfigError(
        f"ACME account key must be RSA or ECDSA P-256/P-384/P-521, not {type(key).__name__}"
    )


def _exchange(response: requests.Response) -> AcmeExchange:
    return AcmeExchange(method=response.request.method or "", url=response.url,
                        status=response.status_code,
                        seconds=response.elapsed.total_seconds(),
                        user_agent=str(response.request.headers.get("User-Agent", "")))


def _ssl_context(ca_bundle_pem: bytes) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cadata=ca_bundle_pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as error:
        raise errors.AcmeConfigError(
            f"ACME caBundle holds no usable PEM certificate: {error}"
        ) from error


def _problem(error: messages.Error, response: requests.Response | None) -> errors.AcmeProblem:
    typ = str(error.typ)
    cls = errors.PROBLEM_CLASSES.get(typ, errors.AcmeProblem)
    return cls(
        typ=typ,
        detail=error.detail or error.title or "",
        status=response.status_code if response is not None else None,
        retry_after=_retry_after(response),
        subproblems=tuple(
            (
                sub.identifier.value if sub.identifier is not None else None,
                str(sub.typ),
                sub.detail or "",
            )
            for sub in error.subproblems or ()
        ),
    )


def _describe(error: Exception) -> str:
    """Readable text for the library's errors, which often wrap a bare Response."""
    if error.args and isinstance(error.args[0], requests.Response):
        response = error.args[0]
        content_type = response.headers.get("Content-Type", "no Content-Type")
        return f"HTTP {response.status_code} ({content_type})"
    if error.args and isinstance(error.args[0], tuple) and error.args[0]:
        first = error.args[0][0]
        if isinstance(first, requests.Response):
            return f"HTTP {first.status_code}: {error.args[0][1]}"
    return str(error) or type(error).__name__


def _http_status(error: Exception) -> int | None:
    """The HTTP status of the bare Response one of the library's errors wraps, if any."""
    if error.args and isinstance(error.args[0], requests.Response):
        return int(error.args[0].status_code)
    return None


def _retry_after(response: requests.Response | None) -> datetime.datetime | None:
    """Retry-After as an aware UTC time; None when absent or unparsable."""
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    if not value:
        return None
    now = datetime.datetime.now(datetime.UTC)
    if value.strip().isdigit():
        return now + datetime.timedelta(seconds=int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def _renewal_info_url(directory: messages.Directory) -> str | None:
    try:
        url = directory["renewalInfo"]
    except KeyError:
        return None
    return url if isinstance(url, str) and url else None


def _aware(moment: datetime.datetime) -> datetime.datetime:
    """RFC 3339 times carry an offset; a naive one (none given) is read as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def _status(status: messages.Status | None) -> str:
    return status.name if status is not None else "unknown"


def _identifier(identifier: messages.Identifier) -> Identifier:
    return Identifier(type=identifier.typ.name, value=identifier.value)


def _problem_detail(error: messages.Error | None) -> Problem | None:
    if error is None:
        return None
    return Problem(typ=str(error.typ), detail=error.detail or error.title or "")


def _challenge_state(
    body: messages.ChallengeBody, *, retry_after: datetime.datetime | None
) -> ChallengeState:
    # to_partial_json gives the wire form for known and unknown types alike.
    wire = body.chall.to_partial_json()
    token = wire.get("token")
    return ChallengeState(
        url=body.uri,
        type=str(wire.get("type", "")),
        status=_status(body.status),
        token=token if isinstance(token, str) else None,
        error=_problem_detail(body.error),
        validated=body.validated,
        retry_after=retry_after,
    )


def _order_state(
    body: messages.Order, *, url: str, retry_after: datetime.datetime | None
) -> OrderState:
    return OrderState(
        url=url,
        status=_status(body.status),
        identifiers=tuple(sorted(_identifier(i) for i in body.identifiers or ())),
        authorization_urls=tuple(sorted(body.authorizations or ())),
        finalize_url=body.finalize,
        certificate_url=body.certificate,
        expires=body.expires,
        error=_problem_detail(body.error),
        retry_after=retry_after,
    )


def _top_issuer_cn(chain_pem: str) -> str | None:
    certificates = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
    names = certificates[-1].issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None
