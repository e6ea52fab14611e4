"""TLS termination for the HTTPS listener: a lean transport over OpenSSL memory BIOs.

uvloop's (and asyncio's) SSL transport costs more per new connection than the
TLS work itself leaves room for: bench B3 measured a third of the data
plane's CPU per connection beyond OpenSSL's handshake in that layer and its
per-connection state machine. This transport keeps only what the data plane
needs:

- the listening sockets and all connections sit in one epoll set (Linux), the
  one descriptor the event loop watches: each wake-up serves a batch of
  ready connections, and a new connection costs one `epoll_ctl`, not a loop
  handle, a poll object and three system calls (uvloop's `add_reader`);
- one `recv` per readable event into OpenSSL's incoming BIO, then as many
  handshake steps or records as it completes (OpenSSL on the socket itself
  would read each record's header and body with separate system calls:
  Python cannot turn on its read-ahead); whatever OpenSSL produced goes out
  with one `send`;
- the application protocol is created only once the handshake succeeded, so
  failed handshakes never reach it; `TlsListener` counts both and enforces the
  handshake deadline when swept;
- writes are sent at once; only what the socket refuses is buffered, and the
  protocol is told to pause writing above 64 KiB;
- `write_and_close` writes a last response and the close_notify with one send;
- `close` sends a close_notify after the buffered bytes and closes without
  waiting for the peer's (as nginx does); `abort` closes at once;
- a closed transport lets go of its protocol (which lets go of its parser),
  so no reference cycle is left: a connection's objects, OpenSSL's buffers
  among them, are freed when it ends and their memory is what the next
  connection gets while it is still in the CPU's caches, not after the next
  garbage collection (bench B3: about 5 % of the CPU per connection).

The certificate is chosen in the SNI callback, before OpenSSL picks one: the
listener's `select_certificate` maps the server name to an SSLContext to switch
to, or to decoded `Credentials` set on the connection itself (see certstore).

TLS-ALPN-01 (RFC 8737) needs the certificate chosen by the ALPN the client
offers, which OpenSSL only looks at after the SNI callback (and Python has no
hook between the two and the certificate choice). So while a challenge is
live, connections read their ClientHello first (`preread`), and one for a
challenge's name offering `acme-tls/1` starts on the challenge's context
(`select_acme_context`), completes the handshake and is closed without
anything else sent. Without live challenges nothing of this runs: normal
handshakes pay one attribute store.

On-demand TLS (`runtime.on_demand`) reads ClientHellos first too: one for a
name whose context is the default (no certificate covers it) is offered to
`hold`, which may keep it waiting, unread by OpenSSL and its socket not
polled, until a certificate was obtained for the name or a bound passed; it
then resumes where it stopped, on the name's context as it is by then.
"""

from __future__ import annotations

import _socket
import asyncio
import logging
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

from certctl.dataplane import credentials
from certctl.dataplane.credentials import Credentials

logger = logging.getLogger(__name__)

READ_SIZE: Final = 65536
WRITE_HIGH_WATER: Final = 64 * 1024  # buffered bytes before the protocol is paused
BACKLOG: Final = 511  # nginx's default
ACCEPT_RETRY_DELAY: Final = 1.0  # after accept failed for want of file descriptors
DEFER_ACCEPT: Final = 1  # seconds a connection may wait for its first bytes before accept

# Final: compiled, each comparison is with a constant, not a lookup in the module's dict.
_HANDSHAKING: Final = 0
_OPEN: Final = 1
_CLOSED: Final = 2
_READABLE: Final = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
_WRITABLE: Final = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
POLL_BATCH: Final = 64  # events taken per wake-up; more wait for the loop's next turn
# libssl, to handshake and close on a connection's SSL directly (credentials._Binding);
# None where it cannot be bound: `_ssl`'s methods then.
_LIBSSL: Final = credentials.BINDING
_WANT_READ: Final = credentials.SSL_ERROR_WANT_READ

Hold = Callable[[str, Callable[[], None]], bool]
"""(server name, resume) -> whether the handshake waits for `resume()` (on-demand TLS)."""


class TlsListener:
    """Accepts TLS connections and hands each, once handshaken, to a new protocol."""

    def __init__(
        self,
        *,
        context: ssl.SSLContext,
        select_certificate: Callable[[str | None], ssl.SSLContext | Credentials],
        protocol_factory: Callable[[], asyncio.Protocol],
        handshake_timeout: float,
        on_handshake: Callable[[bool], None],
        admit: Callable[[], bool],
        preread: Callable[[], bool] = lambda: False,
        select_acme_context: Callable[[str], ssl.SSLContext | None] = lambda _name: None,
        hold: Hold | None = None,
        unknown_context: ssl.SSLContext | None = None,
        hold_timeout: float = 0.0,
    ) -> None:
        """Handshakes start on `context` (which holds no certificate) and present what
        `select_certificate(server name)` gives (None: no SNI); `on_handshake(True)` after
        each completed handshake, `(False)` after each failed one (an error, a timeout, the
        peer leaving before it finished). Before each accept, `admit()` says whether there
        is room for one more connection; when there is not, accepting stops until
        `resume_accepting` (or a failed handshake).

        While `preread()` is true, a connection reads the ClientHello before OpenSSL
        does and starts on the server name's context itself: a context that asks for
        client certificates must be the one the handshake starts on, since OpenSSL's
        SNI switch (SSL_set_SSL_CTX) keeps the verify mode of the first (nginx sets it
        again in its SNI callback; Python cannot). It must also be true while
        `select_acme_context(server name)` may return a context: the one answering a
        TLS-ALPN-01 challenge, for a ClientHello that offers ALPN acme-tls/1.

        With `hold`, `preread()` must be true, and a ClientHello whose name gets
        `unknown_context` (the default certificate) is offered to `hold(name, resume)`:
        True keeps the handshake waiting until `resume()`, which `hold` promises within
        `hold_timeout` seconds (the handshake deadline is extended by that much)."""
        # The SNI callback receives the SSL connection's owner: the transport.
        context.sni_callback = _switch_context  # type: ignore[assignment]
        self.context = context
        self.select_certificate = select_certificate
        self.protocol_factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        self.on_handshake = on_handshake
        self.admit = admit
        self.preread = preread
        self.select_acme_context = select_acme_context
        self.hold = hold
        self.unknown_context = unknown_context
        self.hold_timeout = hold_timeout
        self.loop = asyncio.get_running_loop()
        # Connections still handshaking, with the time.monotonic() they must be done by.
        self.handshaking: dict[TlsTransport, float] = {}
        # Every connection of this listener's loop receives into this buffer (the loop runs
        # one callback at a time) and copies it into its incoming BIO at once: no 64 KiB
        # allocation per read.
        self.received = memoryview(bytearray(READ_SIZE))
        # The listening sockets and the connections are polled by an epoll set of their
        # own, which is the one descriptor the loop watches: registering each connection
        # with uvloop would cost a handle, a poll object and three system calls (it checks
        # that the descriptor can be polled), and one callback per event instead of one per
        # batch.
        self.poller = select.epoll()
        self.transports: dict[int, TlsTransport] = {}
        self._listening: dict[int, tuple[socket.socket, int]] = {}  # fd: (socket, family)
        self._accepting: set[int] = set()  # listening descriptors in the poller's set
        self._full = False  # stopped accepting: `admit` said no
        self.loop.add_reader(self.poller.fileno(), self._dispatch)

    def listen(self, host: str, port: int) -> None:
        """Bind every address `host` resolves to (as `loop.create_server` does) and accept."""
        seen = set()
        for family, _, _, _, sockaddr in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            # The whole address: an IPv6 one keeps its scope (link-local) and flow info.
            listening = socket.create_server(sockaddr, family=family, backlog=BACKLOG)
            listening.setblocking(False)
            # Accepted connections inherit it (Linux): no setsockopt per connection.
            listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Connections are accepted once their first bytes (the ClientHello) are in, as
            # with nginx's `listen ... deferred`, and read at once: not after one more turn
            # of the loop and the poller. One that sends nothing is accepted after
            # DEFER_ACCEPT seconds; its handshake deadline counts from then.
            listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT)
            self._listening[listening.fileno()] = (listening, int(family))
            self._start_accepting(listening.fileno())

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets."""
        return [listening for listening, _ in self._listening.values()]

    def stop_listening(self) -> None:
        """Close the listening sockets, so that new connections are refused, and keep
        serving the open ones (the data plane drains them)."""
        for fd in list(self._accepting):
            self._stop_accepting(fd)
        for listening, _ in self._listening.values():
            listening.close()
        self._listening.clear()

    def close(self) -> None:
        """Stop accepting and drop every connection."""
        for listening, _ in self._listening.values():
            listening.close()
        self._listening.clear()
        self._accepting.clear()
        for transport in list(self.transports.values()):
            transport.abort()
        if not self.poller.closed:
            self.loop.remove_reader(self.poller.fileno())
            self.poller.close()

    def sweep(self, now: float) -> None:
        """Cut handshakes past their deadline (`now`: time.monotonic(), as the sweeper's)."""
        for transport, deadline in list(self.handshaking.items()):
            if now >= deadline:
                transport.abort()

    def handshake_ended(self, transport: TlsTransport, *, completed: bool) -> None:
        del self.handshaking[transport]
        self.on_handshake(completed)
        if not completed:
            self.resume_accepting()  # if the limit had paused it

    def resume_accepting(self) -> None:
        """Accept again if `admit` had stopped it (a connection was let go)."""
        if self._full:
            self._full = False
            for fd in self._listening:
                self._start_accepting(fd)

    def _start_accepting(self, fd: int) -> None:
        if fd not in self._accepting:
            self._accepting.add(fd)
            self.poller.register(fd, select.EPOLLIN)

    def _stop_accepting(self, fd: int) -> None:
        if fd in self._accepting:
            self._accepting.discard(fd)
            self.poller.unregister(fd)

    def _dispatch(self) -> None:
        transports = self.transports
        for fd, events in self.poller.poll(0, POLL_BATCH):
            transport = transports.get(fd)
            if transport is None:
                listening = self._listening.get(fd)
                if listening is not None:
                    self._accept(fd, listening[0], listening[1])
                continue  # else closed by an earlier callback of this batch
            try:
                if events & _WRITABLE and transport._writing:
                    transport._on_writable()
                if events & _READABLE and transport._reading:
                    transport._on_readable()
            except Exception:
                transport._failed()

    def _accept(self, listening_fd: int, listening: socket.socket, family: int) -> None:
        if not self.admit():
            # Unregistered, or the waiting connection would wake the poller in a loop.
            self._full = True
            for fd in list(self._accepting):
                self._stop_accepting(fd)
            return
        # One connection per readable event, as nginx does by default (multi_accept off):
        # draining the backlog costs a failing accept4 per event.
        try:
            # socket.accept() would also convert the family to an enum per connection.
            fd, peer = listening._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as err:  # EMFILE, ENFILE, ENOBUFS: pause, as asyncio's servers do
            logger.error("cannot accept TLS connections for %.0f s: %s", ACCEPT_RETRY_DELAY, err)
            self._stop_accepting(listening_fd)
            self.loop.call_later(ACCEPT_RETRY_DELAY, self._retry_accepting, listening_fd)
            return
        # The C socket type: socket.socket's Python layer would add two calls to open and
        # three to close each connection.
        sock = _socket.socket(family, socket.SOCK_STREAM, 0, fd)
        sock.setblocking(False)
        transport = TlsTransport(listener=self, sock=sock, peer=peer)
        try:
            transport._on_readable()  # the ClientHello came before the accept (deferred)
        except Exception:
            transport._failed()

    def _retry_accepting(self, listening_fd: int) -> None:
        if listening_fd in self._listening and not self._full:  # not closed nor full meanwhile
            self._start_accepting(listening_fd)


def _switch_context(
    transport: TlsTransport, server_name: str | None, _context: ssl.SSLContext
) -> None:
    presented = transport._listener.select_certificate(server_name)
    if isinstance(presented, ssl.SSLContext):
        transport._ssl.context = presented
    elif not presented.present(transport._pointer):
        # The handshake goes on without a certificate and fails: logged as it ends.
        logger.error("OpenSSL refused the certificate for %r", server_name)


class TlsTransport(asyncio.Transport):
    """One server-side TLS connection."""

    __slots__ = (
        "__weakref__",
        "_acme_tls",
        "_closing",
        "_deliver",
        "_fd",
        "_feed",
        "_held",
        "_incoming",
        "_listener",
        "_loop",
        "_out",
        "_outgoing",
        "_peer",
        "_pointer",
        "_polled",
        "_preread",
        "_protocol",
        "_protocol_paused",
        "_reading",
        "_recv_into",
        "_send",
        "_sock",
        "_ssl",
        "_ssl_pending",
        "_ssl_read",
        "_ssl_write",
        "_state",
        "_take_outgoing",
        "_writing",
    )

    def __init__(self, *, listener: TlsListener, sock: _socket.socket, peer: Any) -> None:
        self._listener = listener
        self._loop = listener.loop
        self._sock = sock
        self._fd = sock.fileno()
        self._peer = peer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # The methods called for every record, bound once: compiled, a call of a C object's
        # method by name looks the name up on its type each time.
        self._recv_into = sock.recv_into
        self._send = sock.send
        self._feed = self._incoming.write
        self._take_outgoing = self._outgoing.read
        # SSLContext.wrap_bio would wrap this in an ssl.SSLObject, a Python layer over every
        # call; the owner is what the SNI callback receives: this transport.
        self._use(listener.context)
        # The ClientHello's bytes so far, while they are read before OpenSSL's (see preread).
        self._preread: bytearray | None = bytearray() if listener.preread() else None
        self._acme_tls = False  # answering a TLS-ALPN-01 challenge: handshake only
        # Held for on-demand TLS: the server name and the ClientHello read so far.
        self._held: tuple[str, bytes] | None = None
        self._protocol: asyncio.BaseProtocol | None = None
        self._deliver: Callable[[bytes], object] | None = None  # the protocol's data_received
        self._state = _HANDSHAKING
        self._reading = True
        self._closing = False
        self._out = b""  # TLS bytes the socket did not take yet
        self._writing = False  # waiting for the socket to take `_out`
        self._protocol_paused = False
        listener.handshaking[self] = time.monotonic() + listener.handshake_timeout
        listener.transports[self._fd] = self
        self._polled = 0  # the events the poller watches for
        self._poll()

    # -- asyncio.Transport --------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        if name == "ssl_object":
            return self._ssl
        if name == "socket":
            return self._sock
        if name == "sslcontext":
            return self._ssl.context
        if name == "sockname" and self._state != _CLOSED:
            return self._sock.getsockname()
        return default

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._deliver = protocol.data_received  # type: ignore[attr-defined]

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return self._reading and self._state != _CLOSED

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._poll()

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._poll()
            if self._incoming.pending or self._ssl.pending():
                self._loop.call_soon(self._decrypt)  # received while paused

    def get_write_buffer_size(self) -> int:
        return len(self._out)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self._encrypt(data):
            self._flush()

    def write_and_close(self, data: bytes) -> None:
        """`write(data)`, then `close()`: the last bytes and the close_notify in one send."""
        if self._closing:
            return
        if not data or self._encrypt(data):
            self.close()

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        """Send what was written and a close_notify, then close."""
        if self._closing:
            return
        self._closing = True
        if self._state == _HANDSHAKING:
            self._finish(None)
            return
        # Queues the close_notify; the peer's is not awaited.
        libssl = _LIBSSL
        if libssl is not None:
            if libssl.SSL_shutdown(self._pointer) < 0:
                libssl.ERR_clear_error()  # after a fatal error: nothing to send
        else:
            # try/except, not contextlib.suppress: that costs a context manager and two
            # calls per connection.
            try:  # noqa: SIM105
                self._ssl.shutdown()
            except (ssl.SSLError, ValueError):
                pass  # SSLWantReadError: the peer's close_notify is not awaited
        self._flush()
        if not self._out:
            self._finish(None)  # closing the socket also unregisters it: no epoll_ctl
        else:
            self.pause_reading()  # only the socket taking the rest is waited for

    def abort(self) -> None:
        self._closing = True
        self._finish(None)

    # -- event loop callbacks ------------------------------------------------------------

    def _on_readable(self) -> None:
        if self._state == _CLOSED:
            return
        received = self._listener.received
        try:
            size = self._recv_into(received)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._finish(err)
            return
        preread = self._preread
        if preread is not None:
            preread += received[:size]
            name, complete = client_hello_server_name(bytes(preread))
            if not complete and size and len(preread) <= _MAX_CLIENT_HELLO:
                return  # the rest of the ClientHello is on its way
            self._preread = None
            if name is not None:
                listener = self._listener
                context = listener.select_acme_context(name)
                if context is not None and ACME_TLS_ALPN in client_hello_alpn(bytes(preread)):
                    self._acme_tls = True
                else:
                    presented = listener.select_certificate(name)
                    if (presented is listener.unknown_context and listener.hold is not None
                            and size and listener.hold(name, self._resume)):
                        self._held = (name, bytes(preread))
                        self.pause_reading()
                        listener.handshaking[self] = (
                            time.monotonic() + listener.hold_timeout + listener.handshake_timeout)
                        return
                    # Credentials are set on the listener's context, by the SNI callback.
                    context = presented if isinstance(presented, ssl.SSLContext) else None
                if context is not None and context is not listener.context:
                    self._use(context)
            self._incoming.write(bytes(preread))
            if not size:
                self._incoming.write_eof()
        elif size:
            self._feed(received[:size])
        else:
            self._incoming.write_eof()
        if self._state == _HANDSHAKING:
            self._handshake()
        else:
            self._decrypt()

    def _resume(self) -> None:
        """Go on with a handshake `hold` kept waiting, on the context its name has now."""
        held, self._held = self._held, None
        if held is None or self._state == _CLOSED:
            return
        name, hello = held
        listener = self._listener
        listener.handshaking[self] = time.monotonic() + listener.handshake_timeout
        presented = listener.select_certificate(name)
        if isinstance(presented, ssl.SSLContext) and presented is not listener.context:
            self._use(presented)
        self.resume_reading()
        self._incoming.write(hello)
        try:
            self._handshake()
        except Exception:
            self._failed()

    def _on_writable(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._finish(err)
            return
        self._out = self._out[sent:]
        if self._out:
            return
        self._writing = False
        self._poll()
        if self._closing:
            self._finish(None)
        elif self._protocol_paused:
            self._protocol_paused = False
            self._protocol.resume_writing()  # type: ignore[union-attr]

    # -- internals -----------------------------------------------------------------------

    def _failed(self) -> None:
        """An event's handling raised: log it and cut the connection (in an except block)."""
        logger.exception("TLS connection from %s failed", self._peer)
        self.abort()

    def _encrypt(self, data: bytes | bytearray | memoryview) -> bool:
        """Hand `data` to OpenSSL; False if that failed, and the connection is closed."""
        try:
            self._ssl_write(data)
        except ssl.SSLError as err:
            self._finish(err)
            return False
        return True

    def _handshake(self) -> None:
        failure = self._handshake_step()
        if failure is not None:
            self._flush()  # the server's flight, or the alert
            if failure:
                logger.debug("TLS handshake from %s failed: %s", self._peer, failure)
                self._finish(None)
            elif self._incoming.eof:
                self._finish(None)  # the client left mid-handshake
            return
        self._flush()
        if self._state == _CLOSED:
            return
        self._state = _OPEN
        self._listener.handshake_ended(self, completed=True)
        if self._acme_tls:
            self.close()  # the validator only needed the handshake (RFC 8737 section 3)
            return
        protocol = self._listener.protocol_factory()
        self.set_protocol(protocol)
        try:
            protocol.connection_made(self)
        except Exception as err:
            logger.exception("data plane connection failed to start")
            self._finish(err)
            return
        if self._incoming.pending or self._incoming.eof:
            self._decrypt()  # the first request often comes with the client's Finished

    def _handshake_step(self) -> str | None:
        """Go on with the handshake: None once it is done, "" while it waits for the
        client's next bytes, else why it failed."""
        libssl = _LIBSSL
        if libssl is not None:
            pointer = self._pointer
            result = libssl.SSL_do_handshake(pointer)
            if result == 1:
                return None
            error = libssl.SSL_get_error(pointer, result)
            return "" if error == _WANT_READ else libssl.failure(error)
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return ""
        except (ssl.SSLError, UnicodeError) as err:
            return str(err)
        return None

    def _decrypt(self) -> None:
        """Hand the protocol what OpenSSL can decrypt from the incoming bytes."""
        read = self._ssl_read
        pending = self._ssl_pending
        incoming = self._incoming
        deliver = self._deliver
        assert deliver is not None
        try:
            while self._reading and self._state == _OPEN:
                data = read(READ_SIZE)
                if not data:
                    self._eof()
                    break
                deliver(data)
                if not (pending() or incoming.pending or incoming.eof):
                    break  # all of it was read: spare the SSLWantReadError of one more read
        except ssl.SSLWantReadError:
            if incoming.eof:
                self._eof()  # the peer closed without a close_notify
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self._eof()
        except ssl.SSLError as err:
            self._finish(err)
            return
        except Exception as err:
            logger.exception("data plane connection failed")
            self._finish(err)
            return
        if self._outgoing.pending:
            self._flush()  # a key update answered, or alerts

    def _use(self, context: ssl.SSLContext) -> None:
        """Go on (or start) with a new SSL connection on `context`, over the same BIOs."""
        self._ssl = context._wrap_bio(  # type: ignore[attr-defined]
            self._incoming, self._outgoing, True, None, owner=self)
        self._pointer = 0 if _LIBSSL is None else _LIBSSL.ssl_of(self._ssl)
        self._ssl_read = self._ssl.read
        self._ssl_pending = self._ssl.pending
        self._ssl_write = self._ssl.write

    def _poll(self) -> None:
        """Have the poller watch for what this connection waits for now."""
        if self._state == _CLOSED:
            return
        events = (select.EPOLLIN if self._reading else 0) | (
            select.EPOLLOUT if self._writing else 0
        )
        if events == self._polled:
            return
        poller = self._listener.poller
        # Unregistered rather than watching for nothing: epoll reports errors and
        # hang-ups regardless, and a paused connection must not be woken by them.
        if not events:
            poller.unregister(self._fd)
        elif self._polled:
            poller.modify(self._fd, events)
        else:
            poller.register(self._fd, events)
        self._polled = events

    def _eof(self) -> None:
        self.pause_reading()
        if (
            self._state == _OPEN
            and not self._closing
            and not self._protocol.eof_received()  # type: ignore[union-attr]
        ):
            self.close()

    def _flush(self) -> None:
        """Send what OpenSSL produced; keep what the socket refuses until it is writable."""
        outgoing = self._outgoing
        if not outgoing.pending or self._state == _CLOSED:
            return
        data = self._take_outgoing()
        if self._out:
            self._out += data
        else:
            try:
                sent = self._send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as err:
                self._finish(err)
                return
            if sent == len(data):
                return
            self._out = data[sent:]
            self._writing = True
            self._poll()
        if (
            not self._protocol_paused
            and self._protocol is not None
            and len(self._out) > WRITE_HIGH_WATER
        ):
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _finish(self, error: Exception | None) -> None:
        if self._state == _CLOSED:
            return
        handshaking = self._state == _HANDSHAKING
        self._state = _CLOSED
        self._closing = True
        del self._listener.transports[self._fd]
        self._sock.close()  # which also takes it out of the poller's set
        self._out = b""
        if handshaking:
            self._listener.handshake_ended(self, completed=False)
        elif self._protocol is not None:
            self._loop.call_soon(self._protocol.connection_lost, error)
            self._protocol = None  # it holds this transport: no cycle left for the GC
            self._deliver = None


_MAX_CLIENT_HELLO: Final = 16_384 + 5  # one TLS record: larger ones go to OpenSSL unread
SERVER_NAME_EXTENSION: Final = 0
ALPN_EXTENSION: Final = 16
ACME_TLS_ALPN: Final = b"acme-tls/1"


def client_hello_server_name(data: bytes) -> tuple[str | None, bool]:
    """The server name of a TLS ClientHello at the start of `data`, and whether the whole
    ClientHello record is there; (None, True) for anything that is not one, or has none
    (OpenSSL then says what it thinks of it)."""
    if len(data) < 5:
        return None, False
    if data[0] != 22:  # not a handshake record
        return None, True
    end = 5 + int.from_bytes(data[3:5], "big")
    if len(data) < end:
        return None, False
    try:
        return _server_name(data[5:end]), True
    except (IndexError, ValueError, UnicodeDecodeError):
        return None, True


def client_hello_alpn(data: bytes) -> list[bytes]:
    """The ALPN protocols a complete ClientHello record at the start of `data` offers; none
    for anything that is not one, or offers none."""
    try:
        hello = data[5:5 + int.from_bytes(data[3:5], "big")]
        at = _extension(hello, ALPN_EXTENSION)
        if at is None:
            return []
        end = at + 2 + int.from_bytes(hello[at:at + 2], "big")  # the protocol name list
        at += 2
        offered: list[bytes] = []
        while at < end:
            length = hello[at]
            offered.append(hello[at + 1:at + 1 + length])
            at += 1 + length
        return offered
    except (IndexError, ValueError):
        return []


def _server_name(hello: bytes) -> str | None:
    at = _extension(hello, SERVER_NAME_EXTENSION)
    if at is None:
        return None
    names_end = at + 2 + int.from_bytes(hello[at:at + 2], "big")  # (type, name) pairs
    at += 2
    while at + 3 <= names_end:
        name_type = hello[at]
        length = int.from_bytes(hello[at + 1:at + 3], "big")
        if name_type == 0:  # host_name
            return hello[at + 3:at + 3 + length].decode("ascii")
        at += 3 + length
    return None


def _extension(hello: bytes, wanted: int) -> int | None:
    """Where the data of extension `wanted` of a ClientHello message starts."""
    if hello[0] != 1:  # not a ClientHello
        return None
    at = 4 + 2 + 32  # handshake header, legacy_version, random
    at += 1 + hello[at]  # session id
    at += 2 + int.from_bytes(hello[at:at + 2], "big")  # cipher suites
    at += 1 + hello[at]  # compression methods
    end = at + 2 + int.from_bytes(hello[at:at + 2], "big")
    at += 2
    while at + 4 <= end:
        kind = int.from_bytes(hello[at:at + 2], "big")
        size = int.from_bytes(hello[at + 2:at + 4], "big")
        at += 4
        if kind == wanted:
            return at
        at += size
    return None
