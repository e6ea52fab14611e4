"""An HTTP/1.1 client's request stream, parsed by httptools into a queue of events.

`RequestReader` is the request parser's callback object for one client
connection (`connection.ClientConnection`, which consumes the events in order):
a `RequestHead` when a head is complete, each body piece as bytes, None at the
end of a message, and a `ParseError` where the stream cannot be parsed further.

The parser has already decoded chunked framing, so the connection always
re-frames bodies itself; a head with both Content-Length and
Transfer-Encoding, or two Hosts, or Transfer-Encoding in HTTP/1.0, or an
upgrade with a body, is refused (`RequestHead.error`), and trailer fields are
dropped, never merged into the head. That is what keeps request smuggling
out. A head is limited in size (MAX_HEAD, 431), target (MAX_TARGET, 414) and
field count (MAX_HEADERS, 431), whether it arrives in one read or many.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Final

import httptools

from certctl.dataplane import forwarding

MAX_HEAD: Final = 65536  # request line + headers; beyond this: 431
MAX_TARGET: Final = 32768  # the request target alone; beyond this: 414
MAX_HEADERS: Final = 256  # header fields in one request; beyond this: 431


class ParseError:
    """A queued event: the request stream cannot be parsed past this point."""

    __slots__ = ("status",)

    def __init__(self, status: int) -> None:
        self.status = status


class RequestHead:
    __slots__ = (
        "chunked",
        "content_length",
        "error",
        "expect_continue",
        "headers",
        "host",
        "http10",
        "keep_alive",
        "method",
        "target",
        "upgrade",
    )

    def __init__(
        self,
        *,
        method: bytes,
        target: bytes,
        http10: bool,
        headers: list[tuple[bytes, bytes]],
        host: bytes | None,
        keep_alive: bool,
        content_length: bytes | None,
        chunked: bool,
        expect_continue: bool,
        upgrade: bytes | None,
        error: int | None,
    ) -> None:
        self.method = method
        self.target = target
        self.http10 = http10  # HTTP/1.0 (else 1.1 or later)
        self.headers = headers  # minus hop-by-hop and the ones we replace
        self.host = host
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.upgrade = upgrade  # the Upgrade header when Connection names it
        self.error = error  # a status to answer instead of serving the request

    @property
    def has_body(self) -> bool:
        return self.chunked or (self.content_length is not None and self.content_length != b"0")

    def header(self, lname: bytes) -> bytes | None:
        for name, value in self.headers:
            if name.lower() == lname:
                return value
        return None


# Parser events: a request head, a body piece, None for the end of a message.
Event = RequestHead | bytes | ParseError | None


class RequestReader:
    """The httptools callbacks (`on_*`) of one connection's request parser, and its events."""

    __slots__ = (
        "_client_timeout",
        "_connection_tokens",
        "_content_length",
        "_expect_continue",
        "_head_error",
        "_head_size",
        "_header_count",
        "_header_size",
        "_headers",
        "_host",
        "_parser",
        "_transfer_encoding",
        "_upgrade",
        "_url",
        "_url_size",
        "events",
        "head_deadline",
        "in_head",
    )

    def __init__(self, *, client_timeout: float) -> None:
        self._client_timeout = client_timeout
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.events: deque[Event] = deque()
        self.in_head = False  # between a message's first byte and the end of its head
        self.head_deadline = 0.0  # when a head being received must be complete
        self._head_size = 0  # bytes received while in the head (httptools buffers a partial one)
        self._url_size = 0
        self._header_size = 0
        self._header_count = 0
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._host: bytes | None = None
        self._content_length: bytes | None = None
        self._transfer_encoding: bytes | None = None
        self._upgrade: bytes | None = None
        self._expect_continue = False
        self._connection_tokens: list[bytes] = []
        self._head_error: int | None = None

    def feed(self, data: bytes) -> bool:
        """Parse `data` into events; True when one says the stream cannot be parsed past it
        (reading it must stop). An upgrade request's head raises httptools'
        HttpParserUpgrade once queued: what follows it belongs to the new protocol."""
        parser = self._parser
        assert parser is not None  # dropped only when the connection was lost
        stop = False
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:  # HttpParserUpgrade is not one
            self.events.append(ParseError(400))
            stop = True
        if self.in_head:
            self._head_size += len(data)
            if self._url_size > MAX_TARGET:
                self.events.append(ParseError(414))
                stop = True
            elif self._head_size > MAX_HEAD:
                self.events.append(ParseError(431))
                stop = True
        return stop

    def close(self) -> None:
        """The connection is lost: the parser holds this reader's callbacks, and without
        that cycle the connection's objects are freed now, not at the next GC."""
        self._parser = None

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_head = True
        self._head_size = 0
        self.head_deadline = time.monotonic() + self._client_timeout
        self._url_size = self._header_size = self._header_count = 0
        self._url = []
        self._headers = []
        self._host = self._content_length = self._transfer_encoding = self._upgrade = None
        self._expect_continue = False
        self._connection_tokens = []
        self._head_error = None

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._url_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            # A trailer field (after a chunked body): dropped, never promoted
            # to a header, since the head may not have been forwarded yet.
            return
        self._header_size += len(name) + len(value) + 4
        self._header_count += 1
        lname = name.lower()
        if lname not in forwarding.NOT_FORWARDED:
            self._headers.append((name, value))
        elif lname == b"host":
            if self._host is not None:
                self._head_error = 400  # RFC 9112 3.2: more than one Host
            self._host = value.strip()
        elif lname == b"content-length":
            self._content_length = value.strip()
        elif lname == b"transfer-encoding":
            # Every field counts: `gzip` then `chunked` is not plain chunked.
            coding = value.strip().lower()
            previous = self._transfer_encoding
            self._transfer_encoding = coding if previous is None else previous + b", " + coding
        elif lname == b"connection":
            self._connection_tokens.extend(t.strip().lower() for t in value.split(b","))
        elif lname == b"upgrade":
            self._upgrade = value.strip()
        elif lname == b"expect":
            self._expect_continue = value.strip().lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self._parser
        assert parser is not None  # it is calling
        error = self._head_error
        tokens = self._connection_tokens
        keep_alive = parser.should_keep_alive()
        # llhttp keeps an HTTP/1.0 connection alive only when it names keep-alive, so
        # without that token a kept-alive one is 1.1, and get_http_version (which formats
        # a string: a third of a microsecond, B4) is asked only for the others.
        http10 = not (keep_alive and b"keep-alive" not in tokens) \
            and parser.get_http_version() == "1.0"
        if self._url_size > MAX_TARGET:
            error = 414  # also when the whole head came in one read
        elif self._url_size + self._header_size > MAX_HEAD or self._header_count > MAX_HEADERS:
            error = 431
        elif self._content_length is not None and self._transfer_encoding is not None:
            error = 400  # llhttp refuses this too; never guess which framing wins
        elif self._transfer_encoding is not None and http10:
            error = 400  # RFC 9112 6.1: an HTTP/1.0 message with it has faulty framing
        elif self._transfer_encoding not in (None, b"chunked"):
            error = 501
        elif self._host is None and not http10:
            error = 400
        elif b"upgrade" in tokens and (
            self._transfer_encoding is not None or self._content_length not in (None, b"0")
        ):
            # llhttp hands what follows an upgrade request's head to the new
            # protocol, so its body would never be forwarded: the upstream
            # would wait for it and take the next bytes as the body instead.
            error = 400
        method = parser.get_method()
        if method == b"CONNECT":
            error = 405  # we are a reverse proxy, not a tunnel
        headers = self._headers
        named = [t for t in tokens if t not in (b"close", b"keep-alive", b"upgrade")]
        if named:
            headers = [(n, v) for n, v in headers if n.lower() not in named]
        self.events.append(
            RequestHead(
                method=method,
                target=b"".join(self._url),
                http10=http10,
                headers=headers,
                host=self._host,
                keep_alive=keep_alive,
                content_length=self._content_length,
                chunked=self._transfer_encoding is not None,
                expect_continue=self._expect_continue,
                upgrade=self._upgrade if b"upgrade" in tokens else None,
                error=error,
            )
        )

    def on_body(self, body: bytes) -> None:
        if body:
            self.events.append(body)

    def on_message_complete(self) -> None:
        self.events.append(None)
