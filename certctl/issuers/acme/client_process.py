"""ACME clients in a helper process, so that `certctl serve` and `certctl controller`
issue from two cores.

The reconcilers run on threads of one process and share its GIL. With thousands of
certificates issuing at once (bench B2) the `acme` library's requests (JWS signing,
josepy's objects, requests, urllib3, http.client) held it a third of the time while the
other core idled. `AcmeProcess` runs `AcmeClient`s in a child process with threads of
its own; `ProcessAcmeClient` is one of them seen from the parent: each call is a message
over a socket pair (pickled: both ends are this program, and nothing else holds the
socket), the calling thread waiting for the answer without the GIL.

The child exits when the parent shuts its control socket or dies. A child that exits on
its own (killed, crashed) fails the calls in flight with `AcmeUnreachable`, as a lost
connection would, and the next call starts a new one with the clients opened before.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certctl.issuers.acme import client as acme_client
from certctl.issuers.acme import errors

logger = logging.getLogger(__name__)

# What a call may ask of a child's client: its public methods, nothing else.
_METHODS = frozenset((
    "close", "register", "profiles", "offers_renewal_info", "new_order", "get_order",
    "get_authorization", "get_challenge", "answer_challenge", "finalize",
    "download_certificate", "renewal_info"))

# (raised, value, the exchanges made, the log records emitted)
_Answer = tuple[bool, Any, list[acme_client.AcmeExchange], list[logging.LogRecord]]


@dataclass(frozen=True, kw_only=True)
class _Opening:
    """What the child builds an `AcmeClient` from (its constructor's arguments)."""

    directory_url: str
    account_key_pem: bytes
    ca_bundle_pem: bytes | None
    skip_tls_verify: bool
    component: str | None

    def __repr__(self) -> str:  # never the key, in logs or tracebacks
        return f"_Opening(directory_url={self.directory_url!r})"


class AcmeProcess:
    """The helper process: started by `start` or with the first client (`client`), ended
    by `close`. A process with no ACME issuer starts none.

    Each calling thread has a socket of its own to the child (`_Channel`), served there
    by a thread of its own: a call is a send and a blocking receive on it, with no lock,
    reader thread or hand-off between threads on the way (each of those queued behind the
    GIL of a process busy issuing).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # starting and ending children
        self._child: _Child | None = None
        self._clients = itertools.count(1)
        # Every client opened, with the account URI it last registered: what a channel
        # sends with a client's first call on it, so a new child builds it as it is.
        self._opened: dict[int, tuple[_Opening, str | None]] = {}
        self._local = threading.local()  # this thread's `_Channel`
        self._closed = False

    def client(self, *, directory_url: str, account_key_pem: bytes,
               ca_bundle_pem: bytes | None, skip_tls_verify: bool, component: str | None,
               on_response: Callable[[acme_client.AcmeExchange], None] | None
               ) -> ProcessAcmeClient:
        """A client of the account, run by the child (see `AcmeClient`'s arguments)."""
        # An unusable key fails here, as `AcmeClient()` would (AcmeConfigError).
        responses = acme_client.ChallengeResponses(
            acme_client.load_account_key(account_key_pem)[0])
        opening = _Opening(directory_url=directory_url, account_key_pem=account_key_pem,
                           ca_bundle_pem=ca_bundle_pem, skip_tls_verify=skip_tls_verify,
                           component=component)
        with self._lock:
            client_id = next(self._clients)
            self._opened[client_id] = (opening, None)
        # With the first client if not before, not at its first call: its imports run
        # while the issuer's account is being set up.
        self.start()
        return ProcessAcmeClient(process=self, client_id=client_id, responses=responses,
                                 on_response=on_response)

    def start(self) -> None:
        """Start the child unless one runs (or `close` ended them): for a process that
        knows it will issue from an ACME issuer before it opens the first client."""
        with self._lock:
            if not self._closed:
                self._running()

    def _running(self) -> _Child:
        """Under the lock: the child, started if none runs."""
        if self._child is None:
            self._child = _Child.start()
        return self._child

    def close(self, *, timeout: float = 5.0) -> None:
        """End the child: it exits once its control socket shuts; killed after `timeout`."""
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
        if child is not None:
            child.end(timeout=timeout)

    def call(self, client_id: int, method: str, arguments: dict[str, Any]) -> _Answer:
        """Run `method` of the child's client `client_id`; its answer."""
        channel = self._channel()
        opening = None
        if client_id not in channel.opened:
            opening = self._opened[client_id]
        try:
            channel.connection.send((client_id, opening, method, arguments))
            answer: _Answer = channel.connection.recv()
        except (EOFError, OSError) as err:
            code = self._lost(channel.child)
            raise errors.AcmeUnreachable(
                f"the ACME helper process exited (code {code}) during the request; it may "
                "or may not have reached the ACME server", url="") from err
        channel.opened.add(client_id)
        return answer

    def registered(self, client_id: int, account_uri: str) -> None:
        """The client's account URI, for a child started after this one exits."""
        opening, _ = self._opened[client_id]
        self._opened[client_id] = (opening, account_uri)

    def _channel(self) -> _Channel:
        """This thread's channel to the running child, starting one (and a child if none
        runs) when it has none yet."""
        channel: _Channel | None = getattr(self._local, "channel", None)
        if channel is not None and channel.child is self._child:
            return channel
        with self._lock:
            if self._closed:
                raise errors.AcmeError("the ACME helper process is stopped")
            child = self._running()
            try:
                channel = child.channel()
            except OSError as err:  # it has just exited: its socket is shut
                failed = err
            else:
                self._local.channel = channel
                return channel
        code = self._lost(child)
        raise errors.AcmeUnreachable(
            f"the ACME helper process exited (code {code}) before the request", url=""
        ) from failed

    def _lost(self, child: _Child) -> int | None:
        """A channel to `child` broke: it exited, or is made to; its exit code. The next
        call starts another (unless `close` ended it)."""
        with self._lock:
            first = self._child is child  # the calls in flight all come here: log once
            if first:
                self._child = None
            closed = self._closed
        code = child.end(timeout=0)
        if first and not closed:
            logger.warning("the ACME helper process exited (code %s); the next ACME "
                           "request starts another", code)
        return code


@dataclass(frozen=True, kw_only=True)
class _Channel:
    """One thread's socket to one child, and the clients it has opened there."""

    child: _Child
    connection: Connection
    opened: set[int]


class _Child:
    """One helper process and its control socket, over which each new channel's socket is
    passed to it."""

    def __init__(self, *, process: subprocess.Popen[bytes], control: socket.socket) -> None:
        self._process = process
        self._control = control

    @classmethod
    def start(cls) -> _Child:
        ours, theirs = socket.socketpair()
        with theirs:
            process = subprocess.Popen(
                [sys.executable, "-m", __name__, "--fd", str(theirs.fileno()),
                 "--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel())],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        return cls(process=process, control=ours)

    def channel(self) -> _Channel:
        """Under `AcmeProcess._lock` (one sender on the control socket): a new channel."""
        ours, theirs = socket.socketpair()
        with theirs:
            try:
                socket.send_fds(self._control, [b"c"], [theirs.fileno()])
            except OSError:
                ours.close()
                raise
        return _Channel(child=self, connection=Connection(ours.detach()), opened=set())

    def end(self, *, timeout: float) -> int | None:
        """Shut the control socket (the child exits at that), wait up to `timeout`, then
        kill it; its exit code."""
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_RDWR)
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            code = self._process.wait()
        self._control.close()
        return code


class ProcessAcmeClient:
    """An `AcmeClient` in the helper process (`AcmeProcess.client`): the same methods,
    results and errors."""

    def __init__(self, *, process: AcmeProcess, client_id: int,
                 responses: acme_client.ChallengeResponses,
                 on_response: Callable[[acme_client.AcmeExchange], None] | None) -> None:
        self._process = process
        self._client_id = client_id
        self._on_response = on_response
        self._account_uri: str | None = None
        self._responses = responses  # made from the account key here: no message needed
        # From the directory, which a client fetches once: asked once (every issued
        # certificate asks whether the CA offers renewal info).
        self._profiles: dict[str, str] | None = None
        self._offers_renewal_info: bool | None = None

    def _call(self, method: str, **arguments: Any) -> Any:
        raised, value, exchanges, records = self._process.call(self._client_id, method,
                                                               arguments)
        for record in records:  # the child's logs join this process's, as if made here
            logger_of_record = logging.getLogger(record.name)
            if logger_of_record.isEnabledFor(record.levelno):
                logger_of_record.handle(record)
        if self._on_response is not None:
            for exchange in exchanges:
                self._on_response(exchange)
        if raised:
            raise value
        return value

    @property
    def account_uri(self) -> str | None:
        return self._account_uri

    def close(self) -> None:
        self._call("close")

    def register(self, *, email: str | None, terms_agreed: bool = True,
                 external_account: acme_client.ExternalAccountKey | None = None) -> str:
        uri: str = self._call("register", email=email, terms_agreed=terms_agreed,
                              external_account=external_account)
        self._process.registered(self._client_id, uri)
        self._account_uri = uri
        return uri

    def profiles(self) -> dict[str, str]:
        if self._profiles is None:
            self._profiles = self._call("profiles")
        return dict(self._profiles)

    def offers_renewal_info(self) -> bool:
        if self._offers_renewal_info is None:
            self._offers_renewal_info = bool(self._call("offers_renewal_info"))
        return self._offers_renewal_info

    def renewal_info(self, *, certificate: x509.Certificate) -> acme_client.RenewalInfo:
        # A certificate object does not pickle; its DER does.
        found: acme_client.RenewalInfo = self._call(
            "renewal_info", certificate=certificate.public_bytes(serialization.Encoding.DER))
        return found

    def new_order(self, *, csr_pem: bytes, profile: str | None = None,
                  replaces: str | None = None) -> acme_client.OrderState:
        found: acme_client.OrderState = self._call("new_order", csr_pem=csr_pem,
                                                   profile=profile, replaces=replaces)
        return found

    def get_order(self, url: str) -> acme_client.OrderState:
        found: acme_client.OrderState = self._call("get_order", url=url)
        return found

    def get_authorization(self, url: str) -> acme_client.AuthorizationState:
        found: acme_client.AuthorizationState = self._call("get_authorization", url=url)
        return found

    def get_challenge(self, url: str) -> acme_client.ChallengeState:
        found: acme_client.ChallengeState = self._call("get_challenge", url=url)
        return found

    def answer_challenge(self, url: str) -> acme_client.ChallengeState:
        found: acme_client.ChallengeState = self._call("answer_challenge", url=url)
        return found

    def key_authorization(self, token: str) -> str:
        return self._responses.key_authorization(token)

    def dns01_txt_value(self, token: str) -> str:
        return self._responses.dns01_txt_value(token)

    def finalize(self, *, order_url: str, finalize_url: str,
                 csr_pem: bytes) -> acme_client.OrderState:
        found: acme_client.OrderState = self._call(
            "finalize", order_url=order_url, finalize_url=finalize_url, csr_pem=csr_pem)
        return found

    def download_certificate(self, *, certificate_url: str,
                             preferred_chain: str | None) -> str:
        found: str = self._call("download_certificate", certificate_url=certificate_url,
                                preferred_chain=preferred_chain)
        return found


# --- the child ---------------------------------------------------------------------------


class _Helper:
    """The helper process's side: a thread for each channel the parent opens, running
    its calls one after the other."""

    def __init__(self, control: socket.socket) -> None:
        self._control = control
        self._lock = threading.Lock()  # building clients
        self._clients: dict[int, acme_client.AcmeClient] = {}
        # Why a client could not be built (its CA bundle): what each of its calls raises,
        # as building it raises in the parent's process.
        self._unusable: dict[int, errors.AcmeConfigError] = {}
        self.running = _RunningCalls()

    def serve(self) -> None:
        """Until the parent shuts the control socket (or dies)."""
        while True:
            try:
                _, fds, _, _ = socket.recv_fds(self._control, 1, 1)
            except OSError:
                return
            if not fds:
                return  # EOF
            threading.Thread(target=self._serve_channel, args=(Connection(fds[0]),),
                             daemon=True, name="acme-channel").start()

    def _serve_channel(self, connection: Connection) -> None:
        try:
            while True:
                client_id, opening, method, arguments = connection.recv()
                if opening is not None:
                    self._open(client_id, *opening)
                connection.send(self._run(client_id, method, arguments))
        except (EOFError, OSError):
            connection.close()

    def _open(self, client_id: int, opening: _Opening, account_uri: str | None) -> None:
        with self._lock:
            if client_id in self._clients or client_id in self._unusable:
                return  # opened by another channel
            try:
                self._clients[client_id] = acme_client.AcmeClient(
                    directory_url=opening.directory_url,
                    account_key_pem=opening.account_key_pem, account_uri=account_uri,
                    ca_bundle_pem=opening.ca_bundle_pem,
                    skip_tls_verify=opening.skip_tls_verify, component=opening.component,
                    on_response=self._observe)
            except errors.AcmeConfigError as err:
                self._unusable[client_id] = err

    def _observe(self, exchange: acme_client.AcmeExchange) -> None:
        self.running.exchanges.append(exchange)

    def _run(self, client_id: int, method: str, arguments: dict[str, Any]) -> _Answer:
        exchanges: list[acme_client.AcmeExchange] = []
        records: list[logging.LogRecord] = []
        self.running.exchanges, self.running.records = exchanges, records
        try:
            if method not in _METHODS:
                raise errors.AcmeError(f"no ACME client method {method!r}")
            if client_id in self._unusable:
                raise self._unusable[client_id]
            client = self._clients[client_id]
            if method == "renewal_info":
                arguments = {"certificate": x509.load_der_x509_certificate(
                    arguments["certificate"])}
            return False, getattr(client, method)(**arguments), exchanges, records
        except Exception as err:  # every failure goes to the caller, as in-process
            return True, _sendable(err), exchanges, records
        finally:
            self.running.records = None


class _RunningCalls(threading.local):
    """What the call a thread of the child runs has made so far."""

    exchanges: list[acme_client.AcmeExchange]
    records: list[logging.LogRecord] | None = None  # None: the thread runs no call


class _CallLogs(logging.Handler):
    """The child's log records: those of a call go back with its answer (the parent
    handles them as its own: its format, level and handlers), the others to stderr."""

    def __init__(self, running: _RunningCalls) -> None:
        super().__init__()
        self._running = running
        self._stderr = logging.StreamHandler()
        self._stderr.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        records = self._running.records
        if records is None:
            self._stderr.handle(record)
            return
        # As logging.handlers.QueueHandler prepares one: what pickles, message made.
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        records.append(record)


def _sendable(error: Exception) -> Exception:
    """`error`, or when it would not come out of pickle as it went in (`errors`' types
    do), an AcmeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(error))  # noqa: S301 - made on the line itself
    except Exception:
        return errors.AcmeError(f"{type(error).__name__}: {error}")
    return error


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    # It lives as long as its socket: the parent stops it by closing it (Ctrl-C and a
    # stop of the process group reach both; the parent may still need it meanwhile).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    helper = _Helper(socket.socket(fileno=args.fd))
    logging.getLogger().setLevel(args.log_level)
    logging.getLogger().addHandler(_CallLogs(helper.running))
    helper.serve()


if __name__ == "__main__":
    main()
