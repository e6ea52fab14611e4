"""What an HTTP/1.1 client is sent: a backend's response framed for it, or our own.

`Relay` frames a backend's response for the client it is relayed to (by
`connection.ClientConnection`): a Content-Length is kept, anything else is
re-chunked for an HTTP/1.1 client, with an HTTP/2 backend's trailers as the
chunked body's trailer section, and ends with the connection for an HTTP/1.0
one. The head is held back until the first body bytes, so that a small
response goes out as one write (one TLS record); when the connection closes
after the response, its bytes are gathered until the end of the backend's read
or of the response, to go out with the close (one send for the end of a short
response and the close_notify). `local_response` and
`switching_protocols` are the data plane's own answer and a 101's head.
"""

from __future__ import annotations

from typing import Final

from certctl.dataplane import dispatch, reasons, upstream

Header = tuple[bytes, bytes]

_CHUNKED: Final = b"transfer-encoding: chunked\r\n"
_CLOSE: Final = b"connection: close\r\n"


class Relay:
    """One client connection's response in flight from its backend."""

    __slots__ = ("_gathered", "_held", "_rechunk", "_trailers", "close_delimited",
                 "keep_alive")

    def __init__(self) -> None:
        self.keep_alive = False  # the connection serves another request after this one
        self.close_delimited = False  # the backend's body ends when its connection does
        self._rechunk = False
        self._held = b""  # the head, waiting for the first body bytes
        self._trailers = b""  # an HTTP/2 backend's, as the chunked body's trailer section
        # Not kept alive: the body's pieces, until `flush` or `end` (kept alive: written at
        # once). One list for the connection's life.
        self._gathered: list[bytes] = []

    def start(
        self,
        response: upstream.ResponseHead,
        *,
        method: bytes,
        http10: bool,
        keep_alive: bool,
        extra: tuple[Header, ...],
        hsts: bytes | None,
    ) -> None:
        """Frame `response` to a `method` request (in HTTP/1.0 if `http10`, else 1.1), and
        hold its head: the backend's fields with `extra` (the data plane's, replacing
        same-named ones but for dispatch.ADDED_BESIDE) and `hsts` (a Strict-Transport-Security
        line) added.
        `keep_alive`: the request lets the connection serve another (`self.keep_alive`
        then says whether the response's framing does too)."""
        client_http11 = not http10
        bodyless = method == b"HEAD" or response.status in (204, 304)
        # Keep a Content-Length, re-chunk the rest for HTTP/1.1 clients, and fall back to
        # closing for HTTP/1.0 ones.
        self._rechunk = False
        self.close_delimited = False
        self._trailers = b""
        framing = b""
        if response.content_length is not None and not response.chunked:
            framing = b"content-length: " + response.content_length + b"\r\n"
        elif not bodyless:
            self.close_delimited = not response.chunked
            if client_http11:
                self._rechunk = True
                framing = _CHUNKED
            else:
                keep_alive = False
        if keep_alive:
            connection = b"" if client_http11 else b"connection: keep-alive\r\n"
        else:
            connection = _CLOSE
        self.keep_alive = keep_alive
        self._gathered.clear()
        parts = [b"HTTP/1.1 %d %s\r\n" % (response.status, response.reason)]
        if extra:
            replaced = {name for name, _ in extra} - dispatch.ADDED_BESIDE
            for name, value in response.headers:
                if name.lower() not in replaced:
                    parts += (name, b": ", value, b"\r\n")
            for name, value in extra:
                parts += (name, b": ", value, b"\r\n")
        else:
            for name, value in response.headers:
                parts += (name, b": ", value, b"\r\n")
        if not response.has_server:
            parts += (b"server: ", dispatch.SERVER, b"\r\n")
        if hsts is not None:
            parts.append(hsts)
        parts += (framing, connection, b"\r\n")
        self._held = b"".join(parts)

    def body(self, chunk: bytes) -> bytes:
        """What to write for a piece of the backend's body (after the head, the first time);
        nothing yet when the connection closes after this response."""
        held, self._held = self._held, b""
        if self._rechunk:
            piece = b"%s%x\r\n%s\r\n" % (held, len(chunk), chunk)
        else:
            piece = held + chunk if held else chunk
        if self.keep_alive:
            return piece
        self._gathered.append(piece)
        return b""

    def flush(self) -> bytes:
        """What is held back: the head, or the gathered body (the backend's bytes so far
        are relayed)."""
        gathered = self._gathered
        if gathered:
            return self._take_gathered(gathered)
        held, self._held = self._held, b""
        return held

    def _take_gathered(self, gathered: list[bytes]) -> bytes:
        out = b"".join(gathered)
        gathered.clear()
        return out

    def trailers(self, trailers: list[Header]) -> None:
        """An HTTP/2 backend's trailers: the chunked body's trailer section (RFC 9112 7.1.2;
        a client that wants none discards it), dropped when the body has a length."""
        if self._rechunk:
            self._trailers = b"".join(name + b": " + value + b"\r\n"
                                      for name, value in trailers)

    def end(self) -> bytes:
        """What to write at the end of the backend's body."""
        held, self._held = self._held, b""
        gathered = self._gathered
        if gathered:
            held = self._take_gathered(gathered)  # the head went into the first piece
        if self._rechunk:
            trailers, self._trailers = self._trailers, b""
            return held + b"0\r\n" + trailers + b"\r\n"
        return held


def local_response(
    *, status: int, body: bytes | None, extra_headers: bytes, keep_alive: bool,
    head_only: bool,
) -> bytes:
    """The data plane's own answer: plain text (`body`, else the reason phrase) with
    `extra_headers` (lines); `head_only` to a HEAD request."""
    reason = reasons.REASONS.get(status, b"")
    if body is None:
        body = reason + b"\n"
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (status, reason),
        b"server: certctl\r\ncontent-type: text/plain; charset=utf-8\r\n",
        b"" if status == 204 else b"content-length: %d\r\n" % len(body),  # RFC 9110 8.6
        extra_headers,
        b"\r\n" if keep_alive else b"connection: close\r\n\r\n",
    ]
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def switching_protocols(response: upstream.ResponseHead, *, upgrade: bytes) -> bytes:
    """The head of a backend's 101 to an upgrade request, relayed (`upgrade`: the protocol
    the backend named, else the one the client asked for)."""
    parts = [b"HTTP/1.1 101 ", response.reason, b"\r\n"]
    for name, value in response.headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (b"connection: upgrade\r\nupgrade: ", upgrade, b"\r\n\r\n")
    return b"".join(parts)
