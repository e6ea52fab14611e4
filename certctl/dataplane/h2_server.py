"""The server side of an HTTP/2 connection (RFC 9113), sans-IO, compiled with mypyc.

`ServerConnection` takes the client's bytes (`receive_data`) and gives back
events; the data plane's answers go in through `send_headers`, `send_data`,
`end_stream` and `reset_stream`, and out as bytes (`data_to_send`). It does
what the h2 library did for the data plane's client connections (framing,
stream states, flow control, the protocol's error handling), and only that:
a server that never pushes, never sends PRIORITY, and leaves request
headers to `http2._Stream`, which checks them in the pass that reads them.

Why not h2: under h2load, h2 and hyperframe were ~45 % of the data plane's
CPU per HTTP/2 request (bench B10's py-spy profile at 363a1f5): a state machine
dispatched per event, a frame object built and serialised per frame, and
h2's bookkeeping around each. Here a frame is parsed where it lies in the
read and written straight into the output buffer, and each stream is a few
ints. h2 still speaks to HTTP/2 backends (`upstream_h2`), the client side.

Conformance is held by h2spec's whole suite, strict cases included
(tests/test_h2spec.py), and by tests/test_h2_server.py with h2's client as
the peer. The choices the RFC leaves to a server:
- a frame on a stream this side reset is ignored (its DATA's window given
  back); other frames on closed streams are the connection error
  STREAM_CLOSED, a HEADERS naming a stream never opened below the highest one
  PROTOCOL_ERROR;
- the client's window updates are batched: a stream's or the connection's
  window is topped up once half of it has been consumed and acknowledged;
- streams past MAX_CONCURRENT_STREAMS are refused (REFUSED_STREAM), so the
  client may send them again;
- a request whose DATA disagrees with its content-length is a stream error
  PROTOCOL_ERROR (RFC 9113 8.1.1).
"""

from __future__ import annotations

import struct
from typing import Final, cast

from hpack import exceptions as hpack_exceptions

from certctl.dataplane import hpack_codec

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 6)
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# Flags
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# Error codes (RFC 9113 7)
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

# Settings (RFC 9113 6.5.2)
SETTINGS_HEADER_TABLE_SIZE: Final = 0x1
SETTINGS_ENABLE_PUSH: Final = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS: Final = 0x3
SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4
SETTINGS_MAX_FRAME_SIZE: Final = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE: Final = 0x6

DEFAULT_WINDOW: Final = 65535
MAX_WINDOW: Final = (1 << 31) - 1
MAX_FRAME_SIZE: Final = 16384  # what we accept: the default, never raised
_LARGEST_FRAME_SIZE: Final = (1 << 24) - 1
# Streams remembered after they close, to tell a frame on a closed stream from one on a
# stream never opened, and to ignore what follows our RST_STREAM.
_CLOSED_REMEMBERED: Final = 4096
_CLOSED_ENDED: Final = 0
_CLOSED_BY_PEER: Final = 1
_CLOSED_BY_US: Final = 2

_FRAME_HEAD: Final = struct.Struct(">HBBBL")  # length (24 bits as 16 + 8), type, flags, id
_SETTING: Final = struct.Struct(">HL")
_UINT32: Final = struct.Struct(">L")


class ProtocolError(Exception):
    """The client broke the protocol: a GOAWAY is queued; write it and close."""

    def __init__(self, message: str, *, error_code: int) -> None:
        super().__init__(message)
        self.error_code = error_code


# -- events ----------------------------------------------------------------------------


class Event:
    """What `receive_data` found in the client's bytes."""


class RequestReceived(Event):
    """A request's header block: `stream_ended` when no body follows."""

    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                 stream_ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.stream_ended = stream_ended


class DataReceived(Event):
    """A DATA frame's data; `flow_controlled_length` (with padding) is what to give back
    with `acknowledge_received_data` once the data is consumed."""

    def __init__(self, stream_id: int, data: bytes, flow_controlled_length: int) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_controlled_length = flow_controlled_length


class TrailersReceived(Event):
    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.stream_id = stream_id
        self.headers = headers


class StreamEnded(Event):
    """The request's body ended (after DATA or trailers; not sent for a request whose
    header block ended the stream: `RequestReceived.stream_ended` says so)."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamReset(Event):
    """A stream ended abnormally: by the client's RST_STREAM (`remote_reset`), or by
    this side for the client's stream error (the RST_STREAM is queued)."""

    def __init__(self, stream_id: int, error_code: int, remote_reset: bool) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote_reset = remote_reset


class WindowUpdated(Event):
    """More may be sent: on `stream_id`, or on every stream when it is 0 (the
    connection's window, or the client's initial stream window, grew)."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class ConnectionTerminated(Event):
    """The client sent GOAWAY."""

    def __init__(self, error_code: int) -> None:
        self.error_code = error_code


class _StreamError(Exception):
    def __init__(self, stream_id: int, error_code: int) -> None:
        super().__init__(stream_id, error_code)
        self.stream_id = stream_id
        self.error_code = error_code


class _StreamState:
    """A stream between its HEADERS and its close."""

    def __init__(self, stream_id: int, *, send_window: int, receive_window: int) -> None:
        self.stream_id = stream_id
        self.remote_open = True  # the client may still send (no END_STREAM yet)
        self.local_open = True  # we may still send
        self.send_window = send_window
        self.receive_window = receive_window  # what the client may still send
        self.unacknowledged = 0  # consumed by the application, not yet given back
        self.expected_length = -1  # the request's content-length, -1 when it has none
        self.received_length = 0


class ServerConnection:
    """One client connection's HTTP/2 state.

    `max_concurrent_streams`, `max_header_list_size` and `initial_window` are this
    side's settings, sent in the preface queued at construction; the connection's own
    receive window is raised to `initial_window` there too."""

    def __init__(self, *, max_concurrent_streams: int, max_header_list_size: int,
                 initial_window: int) -> None:
        self.encoder = hpack_codec.Encoder()
        self.decoder = hpack_codec.Decoder(max_header_list_size=max_header_list_size)
        self.highest_inbound_stream_id = 0
        self.max_outbound_frame_size = MAX_FRAME_SIZE  # the client's SETTINGS_MAX_FRAME_SIZE
        self._max_concurrent_streams = max_concurrent_streams
        self._initial_window = initial_window  # the client's window on each stream
        self._peer_initial_window = DEFAULT_WINDOW  # ours on each stream
        self._send_window = DEFAULT_WINDOW  # connection-level, ours
        self._receive_window = initial_window  # connection-level, the client's
        self._unacknowledged = 0  # connection-level
        self._streams: dict[int, _StreamState] = {}
        self._closed_streams: dict[int, int] = {}  # id -> how it closed (_CLOSED_*)
        self._preface_seen = False
        self._settings_seen = False
        self._terminated = False
        self._buffer = b""
        # The header block being received: its stream, fragments, and what its HEADERS
        # frame said (END_STREAM; a stream error found in the frame itself).
        self._block_stream = 0
        self._block: list[bytes] = []
        self._block_end_stream = False
        self._block_error = 0
        self._out = bytearray()
        self._queue_settings(((SETTINGS_MAX_CONCURRENT_STREAMS, max_concurrent_streams),
                              (SETTINGS_MAX_HEADER_LIST_SIZE, max_header_list_size),
                              (SETTINGS_INITIAL_WINDOW_SIZE, initial_window)))
        if initial_window > DEFAULT_WINDOW:
            self._queue_window_update(0, initial_window - DEFAULT_WINDOW)

    # -- what the application calls --------------------------------------------------

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def local_flow_control_window(self, stream_id: int) -> int:
        """What may be sent on the stream now (its window and the connection's)."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.local_open:
            return 0
        return min(stream.send_window, self._send_window)

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], *,
                     end_stream: bool) -> None:
        """A response's header block (or trailers); dropped if the stream is gone."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.local_open or self._terminated:
            return
        block = self.encoder.encode(headers)
        size = self.max_outbound_frame_size
        flags = END_STREAM if end_stream else 0
        if len(block) <= size:
            self._queue_frame(HEADERS, flags | END_HEADERS, stream_id, block)
        else:
            self._queue_frame(HEADERS, flags, stream_id, block[:size])
            for start in range(size, len(block), size):
                last = start + size >= len(block)
                self._queue_frame(CONTINUATION, END_HEADERS if last else 0, stream_id,
                                  block[start:start + size])
        if end_stream:
            self._end_local(stream)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Body bytes within `local_flow_control_window`; dropped if the stream is gone."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.local_open or self._terminated:
            return
        length = len(data)
        stream.send_window -= length
        self._send_window -= length
        size = self.max_outbound_frame_size
        if length <= size:
            self._queue_frame(DATA, END_STREAM if end_stream else 0, stream_id, data)
        else:
            for start in range(0, length, size):
                last = start + size >= length
                self._queue_frame(DATA, END_STREAM if end_stream and last else 0, stream_id,
                                  data[start:start + size])
        if end_stream:
            self._end_local(stream)

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, *, error_code: int) -> None:
        """RST_STREAM a stream still open; nothing if it has closed already."""
        stream = self._streams.get(stream_id)
        if stream is None or self._terminated:
            return
        self._queue_frame(RST_STREAM, 0, stream_id, _UINT32.pack(error_code))
        self._close(stream_id, _CLOSED_BY_US)

    def acknowledge_received_data(self, length: int, stream_id: int) -> None:
        """`length` flow-controlled bytes of the stream were consumed: the windows are
        topped up once half of them is used."""
        if self._terminated:
            return
        self._acknowledge_connection(length)
        stream = self._streams.get(stream_id)
        if stream is not None and stream.remote_open:
            stream.unacknowledged += length
            if stream.unacknowledged >= self._initial_window // 2:
                increment, stream.unacknowledged = stream.unacknowledged, 0
                stream.receive_window += increment
                self._queue_window_update(stream_id, increment)

    def announce_shutdown(self) -> int:
        """GOAWAY (NO_ERROR) naming the last stream the client opened, which may finish;
        the connection goes on (RFC 9113 6.8's graceful shutdown). Returns that stream."""
        if not self._terminated:
            self._queue_goaway(NO_ERROR)
        return self.highest_inbound_stream_id

    def close_connection(self, *, error_code: int = NO_ERROR) -> None:
        """GOAWAY, naming the last stream the client opened."""
        if not self._terminated:
            self._queue_goaway(error_code)
            self._terminated = True

    # -- receiving --------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """The events in the client's bytes; ProtocolError (a GOAWAY queued) if the
        client broke the protocol. Nothing once the connection is terminated."""
        events: list[Event] = []
        if self._terminated:
            return events
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        position = 0
        end = len(data)
        try:
            if not self._preface_seen:
                if end < len(PREFACE):
                    if not PREFACE.startswith(data):
                        raise ProtocolError("invalid connection preface",
                                            error_code=PROTOCOL_ERROR)
                    self._buffer = data
                    return events
                if data[:len(PREFACE)] != PREFACE:
                    raise ProtocolError("invalid connection preface", error_code=PROTOCOL_ERROR)
                self._preface_seen = True
                position = len(PREFACE)
            while end - position >= 9:
                length = (data[position] << 16) | (data[position + 1] << 8) | data[position + 2]
                if length > MAX_FRAME_SIZE:
                    raise ProtocolError(f"a frame of {length} octets",
                                        error_code=FRAME_SIZE_ERROR)
                start = position + 9
                if end - start < length:
                    break
                frame_type = data[position + 3]
                flags = data[position + 4]
                stream_id = (((data[position + 5] & 0x7F) << 24) | (data[position + 6] << 16)
                             | (data[position + 7] << 8) | data[position + 8])
                payload = data[start:start + length]
                position = start + length
                if not self._settings_seen:
                    if frame_type != SETTINGS or flags & ACK:
                        raise ProtocolError("the preface is not followed by SETTINGS",
                                            error_code=PROTOCOL_ERROR)
                    self._settings_seen = True
                try:
                    self._receive_frame(frame_type, flags, stream_id, payload, events)
                except _StreamError as stream_error:  # one name per type: mypyc casts it
                    self._stream_error(stream_error.stream_id, stream_error.error_code, events)
            if position < end:
                self._buffer = data[position:]
        except ProtocolError as error:
            self._queue_goaway(error.error_code)
            self._terminated = True
            raise
        return events

    def _receive_frame(self, frame_type: int, flags: int, stream_id: int, payload: bytes,
                       events: list[Event]) -> None:
        if self._block_stream and frame_type != CONTINUATION:
            raise ProtocolError("a header block interrupted", error_code=PROTOCOL_ERROR)
        if frame_type == DATA:
            self._receive_data_frame(flags, stream_id, payload, events)
        elif frame_type == HEADERS:
            self._receive_headers(flags, stream_id, payload, events)
        elif frame_type == CONTINUATION:
            if not self._block_stream or stream_id != self._block_stream:
                raise ProtocolError("CONTINUATION outside a header block",
                                    error_code=PROTOCOL_ERROR)
            self._block.append(payload)
            if flags & END_HEADERS:
                self._end_block(events)
        elif frame_type == WINDOW_UPDATE:
            self._receive_window_update(stream_id, payload, events)
        elif frame_type == SETTINGS:
            self._receive_settings(flags, stream_id, payload, events)
        elif frame_type == PING:
            if stream_id:
                raise ProtocolError("PING on a stream", error_code=PROTOCOL_ERROR)
            if len(payload) != 8:
                raise ProtocolError("PING of a wrong length", error_code=FRAME_SIZE_ERROR)
            if not flags & ACK:
                self._queue_frame(PING, ACK, 0, payload)
        elif frame_type == RST_STREAM:
            self._receive_reset(stream_id, payload, events)
        elif frame_type == PRIORITY:
            if not stream_id:
                raise ProtocolError("PRIORITY on stream 0", error_code=PROTOCOL_ERROR)
            if len(payload) != 5:
                raise _StreamError(stream_id, FRAME_SIZE_ERROR)
            if _UINT32.unpack_from(payload)[0] & 0x7FFFFFFF == stream_id:
                raise _StreamError(stream_id, PROTOCOL_ERROR)
        elif frame_type == GOAWAY:
            if stream_id:
                raise ProtocolError("GOAWAY on a stream", error_code=PROTOCOL_ERROR)
            self._terminated = True
            events.append(ConnectionTerminated(
                _UINT32.unpack_from(payload, 4)[0] if len(payload) >= 8 else NO_ERROR))
        elif frame_type == PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE from a client", error_code=PROTOCOL_ERROR)
        # Frames of unknown types are ignored (RFC 9113 5.5).

    def _receive_data_frame(self, flags: int, stream_id: int, payload: bytes,
                            events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError("DATA on stream 0", error_code=PROTOCOL_ERROR)
        flow_length = len(payload)
        if flow_length > self._receive_window:
            raise ProtocolError("DATA beyond the connection's window",
                                error_code=FLOW_CONTROL_ERROR)
        self._receive_window -= flow_length
        data = _unpadded(flags, payload)
        stream = self._streams.get(stream_id)
        ended = bool(flags & END_STREAM)
        error = NO_ERROR
        if stream is None or not stream.remote_open:
            error = STREAM_CLOSED
        elif flow_length > stream.receive_window:
            error = FLOW_CONTROL_ERROR
        else:
            stream.receive_window -= flow_length
            stream.received_length += len(data)
            if stream.expected_length >= 0 and (
                stream.received_length > stream.expected_length
                or (ended and stream.received_length != stream.expected_length)
            ):
                error = PROTOCOL_ERROR
        if error:
            # No application reads this DATA, so none gives its connection window back.
            self._acknowledge_connection(flow_length)
            if stream is None:
                self._check_closed(stream_id, "DATA")
                return
            raise _StreamError(stream_id, error)
        assert stream is not None
        events.append(DataReceived(stream_id, data, flow_length))
        if ended:
            events.append(StreamEnded(stream_id))
            self._end_remote(stream)

    def _receive_headers(self, flags: int, stream_id: int, payload: bytes,
                         events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError("HEADERS on stream 0", error_code=PROTOCOL_ERROR)
        fragment = _unpadded(flags, payload)
        self._block_error = NO_ERROR
        if flags & PRIORITY_FLAG:
            if len(fragment) < 5:
                raise ProtocolError("HEADERS too short for its priority",
                                    error_code=FRAME_SIZE_ERROR)
            if _UINT32.unpack_from(fragment)[0] & 0x7FFFFFFF == stream_id:
                self._block_error = PROTOCOL_ERROR  # once the block is decoded
            fragment = fragment[5:]
        self._block_stream = stream_id
        self._block = [fragment]
        self._block_end_stream = bool(flags & END_STREAM)
        if flags & END_HEADERS:
            self._end_block(events)

    def _end_block(self, events: list[Event]) -> None:
        stream_id = self._block_stream
        block = self._block[0] if len(self._block) == 1 else b"".join(self._block)
        self._block_stream = 0
        self._block = []
        ended = self._block_end_stream
        # Decoded whatever becomes of the stream: the table must stay in step.
        try:
            headers = self.decoder.decode(block, raw=True)
        except hpack_exceptions.OversizedHeaderListError as error:
            raise ProtocolError(str(error), error_code=ENHANCE_YOUR_CALM) from error
        except (hpack_exceptions.HPACKError, IndexError, ValueError) as error:
            raise ProtocolError(f"header block: {error}", error_code=COMPRESSION_ERROR) from error
        fields = cast("list[tuple[bytes, bytes]]", headers)  # raw=True: bytes
        stream = self._streams.get(stream_id)
        if stream is not None:
            if not stream.remote_open:
                raise _StreamError(stream_id, STREAM_CLOSED)
            if not ended:  # trailers must end the stream (RFC 9113 8.1)
                raise _StreamError(stream_id, PROTOCOL_ERROR)
            if stream.expected_length >= 0 and stream.received_length != stream.expected_length:
                raise _StreamError(stream_id, PROTOCOL_ERROR)
            events.append(TrailersReceived(stream_id, fields))
            events.append(StreamEnded(stream_id))
            self._end_remote(stream)
            return
        if stream_id <= self.highest_inbound_stream_id:
            self._check_closed(stream_id, "HEADERS")
            return
        if not stream_id & 1:
            raise ProtocolError(f"the client opened stream {stream_id}, an even one",
                                error_code=PROTOCOL_ERROR)
        self.highest_inbound_stream_id = stream_id
        if self._block_error:  # `_stream_error` remembers the stream as reset by us
            raise _StreamError(stream_id, self._block_error)
        if len(self._streams) >= self._max_concurrent_streams:
            raise _StreamError(stream_id, REFUSED_STREAM)
        stream = _StreamState(stream_id, send_window=self._peer_initial_window,
                              receive_window=self._initial_window)
        self._streams[stream_id] = stream
        for name, value in fields:
            if name == b"content-length":
                if not value.isdigit() or (
                        stream.expected_length >= 0 and int(value) != stream.expected_length):
                    raise _StreamError(stream_id, PROTOCOL_ERROR)
                stream.expected_length = int(value)
        if ended and stream.expected_length > 0:
            raise _StreamError(stream_id, PROTOCOL_ERROR)
        events.append(RequestReceived(stream_id, fields, ended))
        if ended:
            self._end_remote(stream)

    def _receive_window_update(self, stream_id: int, payload: bytes,
                               events: list[Event]) -> None:
        if len(payload) != 4:
            raise ProtocolError("WINDOW_UPDATE of a wrong length", error_code=FRAME_SIZE_ERROR)
        increment = _UINT32.unpack_from(payload)[0] & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise ProtocolError("WINDOW_UPDATE of 0", error_code=PROTOCOL_ERROR)
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolError("the connection's window past 2^31-1",
                                    error_code=FLOW_CONTROL_ERROR)
            events.append(WindowUpdated(0))
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id > self.highest_inbound_stream_id:
                raise ProtocolError("WINDOW_UPDATE on an idle stream",
                                    error_code=PROTOCOL_ERROR)
            return  # a closed stream's, sent before the client saw it close
        if not increment:
            raise _StreamError(stream_id, PROTOCOL_ERROR)
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise _StreamError(stream_id, FLOW_CONTROL_ERROR)
        events.append(WindowUpdated(stream_id))

    def _receive_settings(self, flags: int, stream_id: int, payload: bytes,
                          events: list[Event]) -> None:
        if stream_id:
            raise ProtocolError("SETTINGS on a stream", error_code=PROTOCOL_ERROR)
        if flags & ACK:
            if payload:
                raise ProtocolError("SETTINGS ACK with a payload", error_code=FRAME_SIZE_ERROR)
            return
        if len(payload) % 6:
            raise ProtocolError("SETTINGS of a wrong length", error_code=FRAME_SIZE_ERROR)
        grown = False
        for offset in range(0, len(payload), 6):
            setting, value = _SETTING.unpack_from(payload, offset)
            if setting == SETTINGS_HEADER_TABLE_SIZE:
                self.encoder.header_table_size = value
            elif setting == SETTINGS_ENABLE_PUSH:
                if value > 1:
                    raise ProtocolError("SETTINGS_ENABLE_PUSH not 0 or 1",
                                        error_code=PROTOCOL_ERROR)
            elif setting == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError("SETTINGS_INITIAL_WINDOW_SIZE past 2^31-1",
                                        error_code=FLOW_CONTROL_ERROR)
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ProtocolError("a stream's window past 2^31-1",
                                            error_code=FLOW_CONTROL_ERROR)
                grown = grown or delta > 0
            elif setting == SETTINGS_MAX_FRAME_SIZE:
                if not MAX_FRAME_SIZE <= value <= _LARGEST_FRAME_SIZE:
                    raise ProtocolError("SETTINGS_MAX_FRAME_SIZE out of range",
                                        error_code=PROTOCOL_ERROR)
                self.max_outbound_frame_size = value
            # Others (the client's concurrency and header list limits, which bind a server
            # that pushes and headers far past ours) and unknown ones are ignored.
        self._queue_frame(SETTINGS, ACK, 0, b"")
        if grown:
            events.append(WindowUpdated(0))

    def _receive_reset(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError("RST_STREAM on stream 0", error_code=PROTOCOL_ERROR)
        if len(payload) != 4:
            raise ProtocolError("RST_STREAM of a wrong length", error_code=FRAME_SIZE_ERROR)
        if stream_id > self.highest_inbound_stream_id:
            raise ProtocolError("RST_STREAM on an idle stream", error_code=PROTOCOL_ERROR)
        if stream_id in self._streams:
            self._close(stream_id, _CLOSED_BY_PEER)
            events.append(StreamReset(stream_id, _UINT32.unpack_from(payload)[0], True))

    def _check_closed(self, stream_id: int, what: str) -> None:
        """A DATA or header block for a stream not open: ignored when we reset it (the
        client may not have seen the reset yet), an error otherwise."""
        if stream_id > self.highest_inbound_stream_id:
            raise ProtocolError(f"{what} on an idle stream", error_code=PROTOCOL_ERROR)
        closed = self._closed_streams.get(stream_id)
        if closed == _CLOSED_BY_US:
            return
        if closed is None and what == "HEADERS":
            raise ProtocolError(f"HEADERS opening stream {stream_id}, below the highest",
                                error_code=PROTOCOL_ERROR)
        raise ProtocolError(f"{what} on closed stream {stream_id}", error_code=STREAM_CLOSED)

    def _stream_error(self, stream_id: int, error_code: int, events: list[Event]) -> None:
        self._queue_frame(RST_STREAM, 0, stream_id, _UINT32.pack(error_code))
        if stream_id in self._streams:
            self._close(stream_id, _CLOSED_BY_US)
            events.append(StreamReset(stream_id, error_code, False))
        else:
            self._closed(stream_id, _CLOSED_BY_US)

    # -- stream states ------------------------------------------------------------------

    def _end_remote(self, stream: _StreamState) -> None:
        stream.remote_open = False
        if not stream.local_open:
            self._close(stream.stream_id, _CLOSED_ENDED)

    def _end_local(self, stream: _StreamState) -> None:
        stream.local_open = False
        if not stream.remote_open:
            self._close(stream.stream_id, _CLOSED_ENDED)

    def _close(self, stream_id: int, how: int) -> None:
        del self._streams[stream_id]
        self._closed(stream_id, how)

    def _closed(self, stream_id: int, how: int) -> None:
        closed = self._closed_streams
        closed[stream_id] = how
        if len(closed) > _CLOSED_REMEMBERED:
            del closed[next(iter(closed))]

    # -- sending ----------------------------------------------------------------------

    def _acknowledge_connection(self, length: int) -> None:
        self._unacknowledged += length
        if self._unacknowledged >= self._initial_window // 2:
            increment, self._unacknowledged = self._unacknowledged, 0
            self._receive_window += increment
            self._queue_window_update(0, increment)

    def _queue_frame(self, frame_type: int, flags: int, stream_id: int, payload: bytes) -> None:
        length = len(payload)
        self._out += _FRAME_HEAD.pack(length >> 8, length & 0xFF, frame_type, flags, stream_id)
        if length:
            self._out += payload

    def _queue_settings(self, settings: tuple[tuple[int, int], ...]) -> None:
        payload = b"".join(_SETTING.pack(setting, value) for setting, value in settings)
        self._queue_frame(SETTINGS, 0, 0, payload)

    def _queue_window_update(self, stream_id: int, increment: int) -> None:
        self._queue_frame(WINDOW_UPDATE, 0, stream_id, _UINT32.pack(increment))

    def _queue_goaway(self, error_code: int) -> None:
        self._queue_frame(GOAWAY, 0, 0, _UINT32.pack(self.highest_inbound_stream_id)
                          + _UINT32.pack(error_code))


def _unpadded(flags: int, payload: bytes) -> bytes:
    """A DATA or HEADERS frame's payload without its padding."""
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolError("padding as long as the frame", error_code=PROTOCOL_ERROR)
    return payload[1:len(payload) - payload[0]]
