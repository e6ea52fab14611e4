"""The data plane's HTTP/2 server connection (certctl/dataplane/h2_server.py), sans-IO,
with the h2 library's client connection as its peer: the bytes each side writes
are what the other reads. h2spec checks the same layer end to end over TLS
(tests/test_h2spec.py); these tests check the choices h2spec leaves open: how
windows are topped up, what is ignored after our own reset, what happens to a
response for a stream that has gone."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest

from certctl.dataplane import h2_server

Headers = list[tuple[bytes, bytes]]
WINDOW = 1 << 20
REQUEST: Headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/a"),
                    (b":authority", b"example.test"), (b"user-agent", b"test")]
RESPONSE: Headers = [(b":status", b"200"), (b"server", b"certctl")]


def _post(length: int) -> Headers:
    return [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/"),
            (b":authority", b"example.test"), (b"content-length", b"%d" % length)]


def _connected(*, streams: int = 128) -> tuple[h2.connection.H2Connection,
                                               h2_server.ServerConnection]:
    client = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding=None))
    server = h2_server.ServerConnection(max_concurrent_streams=streams,
                                        max_header_list_size=65536, initial_window=WINDOW)
    client.initiate_connection()
    assert server.receive_data(client.data_to_send()) == []
    client.receive_data(server.data_to_send())  # our settings and window; the client ACKs
    assert server.receive_data(client.data_to_send()) == []
    client.receive_data(server.data_to_send())  # our ACK of the client's settings
    return client, server


def _exchange(client: h2.connection.H2Connection,
              server: h2_server.ServerConnection) -> list[h2_server.Event]:
    return server.receive_data(client.data_to_send())


def _to_client(client: h2.connection.H2Connection,
               server: h2_server.ServerConnection) -> list[h2.events.Event]:
    return client.receive_data(server.data_to_send())


def test_the_preface_gives_the_client_our_settings_and_window() -> None:
    client, _ = _connected(streams=7)
    assert client.remote_settings.max_concurrent_streams == 7
    assert client.remote_settings.initial_window_size == WINDOW
    assert client.remote_settings.max_header_list_size == 65536
    assert client.outbound_flow_control_window == WINDOW


def test_requests_and_responses_with_the_tables_in_step() -> None:
    client, server = _connected()
    for stream_id in (1, 3, 5):  # the later ones from the dynamic tables
        client.send_headers(stream_id, REQUEST, end_stream=True)
        [received] = _exchange(client, server)
        assert isinstance(received, h2_server.RequestReceived)
        assert (received.stream_id, received.headers, received.stream_ended) == (
            stream_id, REQUEST, True)
        response = [*RESPONSE, (b"x-stream", b"%d" % stream_id)]
        server.send_headers(stream_id, response, end_stream=False)
        server.send_data(stream_id, b"hello", end_stream=True)
        answered, data, ended = _to_client(client, server)
        assert isinstance(answered, h2.events.ResponseReceived)
        assert answered.headers == response
        assert isinstance(data, h2.events.DataReceived) and data.data == b"hello"
        assert isinstance(ended, h2.events.StreamEnded)
    assert server.highest_inbound_stream_id == 5
    assert server.local_flow_control_window(1) == 0  # closed


def test_a_header_block_larger_than_a_frame_goes_out_in_continuations() -> None:
    client, server = _connected()
    client.send_headers(1, REQUEST, end_stream=True)
    _exchange(client, server)
    big = [*RESPONSE, *((b"x-%d" % number, b"v" * 1000) for number in range(40))]
    server.send_headers(1, big, end_stream=True)
    out = server.data_to_send()
    assert out[3] == h2_server.HEADERS and out[4] & h2_server.END_HEADERS == 0
    [answered, _] = client.receive_data(out)
    assert isinstance(answered, h2.events.ResponseReceived) and answered.headers == big


@pytest.mark.parametrize("block", [
    b"\x7f\xff\xff\xff\xff\xff\x0f",  # an integer over five continuation octets
    b"\xff\x80\x00",  # an index past the tables
    b"\x82\x3f\xe1\x1f",  # a size update after a field
    b"\x3f\xe1\xff\x03",  # a size update above the allowed size
])
def test_a_block_that_does_not_decode_ends_the_connection(block: bytes) -> None:
    """COMPRESSION_ERROR (RFC 9113 4.3); h2's server, with hpack's decoder, refuses each
    block too (with PROTOCOL_ERROR for some)."""
    for ours in (True, False):
        client = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        frame = (b"\x00\x00" + bytes([len(block), h2_server.HEADERS,
                                      h2_server.END_HEADERS | h2_server.END_STREAM])
                 + (1).to_bytes(4, "big") + block)
        if ours:
            server = h2_server.ServerConnection(max_concurrent_streams=128,
                                                max_header_list_size=65536,
                                                initial_window=WINDOW)
            with pytest.raises(h2_server.ProtocolError):
                server.receive_data(client.data_to_send() + frame)
            [terminated] = [event for event in client.receive_data(server.data_to_send())
                            if isinstance(event, h2.events.ConnectionTerminated)]
            assert terminated.error_code == h2.errors.ErrorCodes.COMPRESSION_ERROR
            assert server.receive_data(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00") == []
        else:
            peer = h2.connection.H2Connection(config=h2.config.H2Configuration(
                client_side=False, header_encoding=None))
            peer.initiate_connection()
            with pytest.raises(h2.exceptions.ProtocolError):
                peer.receive_data(client.data_to_send() + frame)


def test_windows_are_topped_up_once_half_is_consumed() -> None:
    """A request body's window comes back only as the application acknowledges it, and
    then in one WINDOW_UPDATE per half window, for the stream and the connection."""
    client, server = _connected()
    body = b"x" * 16384
    client.send_headers(1, _post(40 * len(body)))
    _exchange(client, server)
    acknowledged = 0
    for _ in range(40):
        client.send_data(1, body)
        [data] = _exchange(client, server)
        assert isinstance(data, h2_server.DataReceived) and data.data == body
        assert data.flow_controlled_length == len(body)
        server.acknowledge_received_data(data.flow_controlled_length, 1)
        acknowledged += len(body)
        updates = [event for event in _to_client(client, server)
                   if isinstance(event, h2.events.WindowUpdated)]
        if acknowledged == WINDOW // 2:
            assert sorted((event.stream_id, event.delta) for event in updates) == [
                (0, WINDOW // 2), (1, WINDOW // 2)]
            acknowledged = 0
        else:
            assert updates == []
    assert client.local_flow_control_window(1) == WINDOW - 8 * len(body)


def test_a_response_waits_for_the_clients_window() -> None:
    client, server = _connected()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    client.send_headers(1, REQUEST, end_stream=True)
    events = _exchange(client, server)
    assert isinstance(events[-1], h2_server.RequestReceived)
    assert server.local_flow_control_window(1) == 10
    server.send_headers(1, RESPONSE, end_stream=False)
    server.send_data(1, b"0123456789")
    assert server.local_flow_control_window(1) == 0
    _to_client(client, server)
    client.increment_flow_control_window(5, stream_id=1)
    [updated] = _exchange(client, server)
    assert isinstance(updated, h2_server.WindowUpdated) and updated.stream_id == 1
    assert server.local_flow_control_window(1) == 5
    # A larger initial window from the client grows every open stream's, and says so.
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 110})
    [updated] = _exchange(client, server)
    assert isinstance(updated, h2_server.WindowUpdated) and updated.stream_id == 0
    assert server.local_flow_control_window(1) == 105


def test_a_body_unlike_its_content_length_resets_that_stream_only() -> None:
    client, server = _connected()
    client.send_headers(1, _post(3))
    client.send_data(1, b"four", end_stream=True)
    client.send_headers(3, REQUEST, end_stream=True)
    events = _exchange(client, server)
    assert [type(event) for event in events] == [
        h2_server.RequestReceived, h2_server.StreamReset, h2_server.RequestReceived]
    reset = events[1]
    assert isinstance(reset, h2_server.StreamReset)
    assert (reset.stream_id, reset.error_code, reset.remote_reset) == (
        1, h2_server.PROTOCOL_ERROR, False)
    [client_reset] = _to_client(client, server)
    assert isinstance(client_reset, h2.events.StreamReset)
    assert client_reset.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR


def test_frames_on_a_stream_we_reset_are_ignored_and_their_window_returned() -> None:
    """The client may send before it sees our RST_STREAM: no error, and the connection's
    window is not lost to a body nobody reads."""
    client, server = _connected()
    client.send_headers(1, _post(WINDOW))
    _exchange(client, server)
    server.reset_stream(1, error_code=h2_server.NO_ERROR)  # answered early
    sent = server.data_to_send()
    for _ in range(32):  # 512 KiB, sent before the client reads the reset
        client.send_data(1, b"y" * 16384)
    assert _exchange(client, server) == []
    client.receive_data(sent)
    updates = [event for event in _to_client(client, server)
               if isinstance(event, h2.events.WindowUpdated)]
    assert [(event.stream_id, event.delta) for event in updates] == [(0, WINDOW // 2)]


def test_data_refused_with_a_stream_error_gives_the_connection_window_back() -> None:
    """DATA that breaks its stream (here: longer than the content-length) reaches no
    application to acknowledge it; the connection's window must not shrink for good."""
    client, server = _connected()
    for number in range(32):  # 32 x 16 KiB: half the connection's window
        stream_id = 1 + 2 * number
        client.send_headers(stream_id, _post(1))
        client.send_data(stream_id, b"z" * 16384)
    events = _exchange(client, server)
    assert [event.error_code for event in events if isinstance(event, h2_server.StreamReset)
            ] == [h2_server.PROTOCOL_ERROR] * 32
    updates = [event for event in _to_client(client, server)
               if isinstance(event, h2.events.WindowUpdated)]
    assert [(event.stream_id, event.delta) for event in updates] == [(0, WINDOW // 2)]


def test_answers_for_a_stream_the_client_reset_are_dropped() -> None:
    """The client's RST_STREAM may come in the read whose earlier events the application
    is still answering: the answer is dropped, the connection goes on."""
    client, server = _connected()
    client.send_headers(1, REQUEST, end_stream=True)
    client.reset_stream(1, error_code=h2.errors.ErrorCodes.CANCEL)
    received, reset = _exchange(client, server)
    assert isinstance(received, h2_server.RequestReceived)
    assert isinstance(reset, h2_server.StreamReset) and reset.remote_reset
    server.send_headers(1, RESPONSE, end_stream=False)
    server.send_data(1, b"late", end_stream=True)
    server.reset_stream(1, error_code=h2_server.CANCEL)
    assert server.data_to_send() == b""
    client.send_headers(3, REQUEST, end_stream=True)
    [received] = _exchange(client, server)
    assert isinstance(received, h2_server.RequestReceived) and received.stream_id == 3


def test_streams_past_the_limit_are_refused() -> None:
    client, server = _connected(streams=2)
    for stream_id in (1, 3):
        client.send_headers(stream_id, REQUEST, end_stream=True)
    # h2's client keeps to our limit: the third is written by hand, GET https / with an
    # :authority literal not indexed (the client's table stays as ours).
    block = b"\x82\x87\x84\x01\x0cexample.test"
    third = (bytes([0, 0, len(block), h2_server.HEADERS,
                    h2_server.END_HEADERS | h2_server.END_STREAM])
             + (5).to_bytes(4, "big") + block)
    events = server.receive_data(client.data_to_send() + third)
    assert [event.stream_id for event in events
            if isinstance(event, h2_server.RequestReceived)] == [1, 3]
    # RST_STREAM (4 octets, type 3, no flags) on stream 5: REFUSED_STREAM.
    assert server.data_to_send() == (b"\x00\x00\x04\x03\x00" + (5).to_bytes(4, "big")
                                     + h2.errors.ErrorCodes.REFUSED_STREAM.to_bytes(4, "big"))


def test_trailers_end_the_stream() -> None:
    client, server = _connected()
    client.send_headers(1, _post(2))
    client.send_data(1, b"ok")
    client.send_headers(1, [(b"x-checksum", b"1")], end_stream=True)
    events = _exchange(client, server)
    assert [type(event) for event in events] == [
        h2_server.RequestReceived, h2_server.DataReceived, h2_server.TrailersReceived,
        h2_server.StreamEnded]
    trailers = events[2]
    assert isinstance(trailers, h2_server.TrailersReceived)
    assert trailers.headers == [(b"x-checksum", b"1")]


def test_a_stream_reopened_after_it_closed_ends_the_connection() -> None:
    client, server = _connected()
    client.send_headers(1, REQUEST, end_stream=True)
    _exchange(client, server)
    server.send_headers(1, RESPONSE, end_stream=True)
    _to_client(client, server)
    frame = (b"\x00\x00\x01" + bytes([h2_server.HEADERS, h2_server.END_HEADERS])
             + (1).to_bytes(4, "big") + b"\x82")
    with pytest.raises(h2_server.ProtocolError) as raised:
        server.receive_data(frame)
    assert raised.value.error_code == h2_server.STREAM_CLOSED
    [terminated] = [event for event in _to_client(client, server)
                    if isinstance(event, h2.events.ConnectionTerminated)]
    assert terminated.error_code == h2.errors.ErrorCodes.STREAM_CLOSED
    assert terminated.last_stream_id == 1
