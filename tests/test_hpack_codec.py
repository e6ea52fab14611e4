"""Our HPACK codec (certctl/dataplane/hpack_codec.py) against RFC 7541 and the hpack library.

- RFC 7541 Appendix C's examples, decoded and encoded byte for byte (the vectors
  are written out here from the RFC's text);
- round trips with hpack both ways (our encoder to hpack's decoder, hpack's
  encoder to ours) over several blocks, with dynamic-table evictions and table
  size updates;
- malformed blocks: ours fails exactly where hpack does, with the same exception
  type (the server connection, `h2_server`, ends the connection with
  COMPRESSION_ERROR for any: tests/test_h2_server.py; h2spec's HPACK cases check
  the result end to end: tests/test_h2spec.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certctl.dataplane import hpack_codec

Headers = list[tuple[bytes, bytes]]


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def _fields(*pairs: tuple[str, str]) -> Headers:
    return [(name.encode(), value.encode()) for name, value in pairs]


# -- RFC 7541 Appendix C ---------------------------------------------------------------------

# C.3 and C.4: three requests on one connection (default 4,096-octet table).
REQUESTS = [
    _fields((":method", "GET"), (":scheme", "http"), (":path", "/"),
            (":authority", "www.example.com")),
    _fields((":method", "GET"), (":scheme", "http"), (":path", "/"),
            (":authority", "www.example.com"), ("cache-control", "no-cache")),
    _fields((":method", "GET"), (":scheme", "https"), (":path", "/index.html"),
            (":authority", "www.example.com"), ("custom-key", "custom-value")),
]
REQUESTS_PLAIN = [  # C.3, string literals as they are
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
]
REQUESTS_HUFFMAN = [  # C.4
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
]
# C.5 and C.6: three responses with a 256-octet table, so entries are evicted.
RESPONSES = [
    _fields((":status", "302"), ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"), ("location", "https://www.example.com")),
    _fields((":status", "307"), ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"), ("location", "https://www.example.com")),
    _fields((":status", "200"), ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"), ("location", "https://www.example.com"),
            ("content-encoding", "gzip"),
            ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")),
]
RESPONSES_PLAIN = [  # C.5
    "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133"
    " 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70"
    " 6c65 2e63 6f6d",
    "4803 3330 37c1 c0bf",
    "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d"
    " 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049"
    " 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e"
    " 3d31",
]
RESPONSES_HUFFMAN = [  # C.6
    "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6"
    " 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
    "4883 640e ffc1 c0bf",
    "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab"
    " 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f"
    " 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
]
SEQUENCES = {
    "C.3 requests": (REQUESTS, REQUESTS_PLAIN, 4096, False),
    "C.4 requests, Huffman": (REQUESTS, REQUESTS_HUFFMAN, 4096, True),
    "C.5 responses": (RESPONSES, RESPONSES_PLAIN, 256, False),
    "C.6 responses, Huffman": (RESPONSES, RESPONSES_HUFFMAN, 256, True),
}
SIZE_UPDATE_TO_256 = _hex("3fe101")  # RFC 7541 6.3: 001 + 256 with a 5-bit prefix


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_rfc7541_sequence_decodes_to_its_header_lists(name: str) -> None:
    header_lists, blocks, table_size, _ = SEQUENCES[name]
    decoder = hpack_codec.Decoder()
    decoder.header_table_size = table_size  # as the RFC's examples start
    for headers, block in zip(header_lists, blocks, strict=True):
        assert decoder.decode(_hex(block), raw=True) == headers
    assert decoder.decode(_hex(blocks[-1])[:1], raw=False) == [
        (headers[0][0].decode(), headers[0][1].decode())]


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_rfc7541_sequence_is_encoded_as_the_rfc_does(name: str) -> None:
    header_lists, blocks, table_size, huffman = SEQUENCES[name]
    encoder = hpack_codec.Encoder()
    encoder.header_table_size = table_size
    expected = [_hex(block) for block in blocks]
    if table_size != 4096:  # our encoder signals the change first (RFC 7541 4.2)
        expected[0] = SIZE_UPDATE_TO_256 + expected[0]
    assert [encoder.encode(headers, huffman=huffman) for headers in header_lists] == expected


def test_rfc7541_c2_field_representations() -> None:
    decoder = hpack_codec.Decoder()
    # C.2.1: literal with indexing, new name; it becomes index 62.
    custom = _hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572")
    assert decoder.decode(custom, raw=True) == _fields(("custom-key", "custom-header"))
    assert decoder.decode(_hex("be"), raw=True) == _fields(("custom-key", "custom-header"))
    # C.2.2: literal without indexing, indexed name; nothing is added (63 stays invalid).
    path = _hex("040c 2f73 616d 706c 652f 7061 7468")
    assert decoder.decode(path, raw=True) == _fields((":path", "/sample/path"))
    with pytest.raises(hpack.InvalidTableIndex):
        decoder.decode(_hex("bf"), raw=True)
    # C.2.3: never indexed, kept as such for whoever forwards it.
    password = _hex("1008 7061 7373 776f 7264 0673 6563 7265 74")
    [field] = hpack_codec.Decoder().decode(password, raw=True)
    assert field == (b"password", b"secret")
    assert isinstance(field, hpack.NeverIndexedHeaderTuple)
    encoder = hpack_codec.Encoder()
    assert encoder.encode([field], huffman=False) == password
    assert encoder.encode([field], huffman=False) == password  # still not in the table
    # C.2.4: indexed field.
    assert hpack_codec.Decoder().decode(_hex("82"), raw=True) == [(b":method", b"GET")]
    assert encoder.encode([(b":method", b"GET")]) == _hex("82")


# -- round trips with hpack ----------------------------------------------------------------

# Few names and values, so that fields repeat and are found in the dynamic table; long
# values so that entries are evicted; any octets in values (HPACK carries them all).
NAMES = st.sampled_from([b":status", b":path", b"content-type", b"cookie", b"x-custom",
                         b"set-cookie", b"date"]) | st.binary(min_size=1, max_size=12)
VALUES = (st.sampled_from([b"", b"200", b"/", b"text/html", b"a=b"])
          | st.binary(max_size=40) | st.binary(min_size=200, max_size=600))
FIELDS = st.tuples(NAMES, VALUES, st.booleans())  # the flag: never indexed
BLOCKS = st.lists(
    st.tuples(st.none() | st.sampled_from([0, 64, 256, 1024, 4096]),
              st.lists(FIELDS, max_size=12)),
    min_size=1, max_size=8)


def _header_list(fields: list[tuple[bytes, bytes, bool]]) -> Headers:
    return [hpack.NeverIndexedHeaderTuple(name, value) if never else (name, value)
            for name, value, never in fields]


def _never_indexed(headers: Iterable[object]) -> list[bool]:
    return [isinstance(field, hpack.NeverIndexedHeaderTuple) for field in headers]


@given(blocks=BLOCKS, huffman=st.booleans())
@settings(max_examples=300, deadline=None)
def test_hpack_decodes_what_we_encode(
    blocks: list[tuple[int | None, list[tuple[bytes, bytes, bool]]]], huffman: bool
) -> None:
    ours, theirs = hpack_codec.Encoder(), hpack.Decoder()
    for table_size, fields in blocks:
        if table_size is not None:
            ours.header_table_size = table_size
        headers = _header_list(fields)
        decoded = theirs.decode(ours.encode(headers, huffman=huffman), raw=True)
        assert decoded == headers
        assert _never_indexed(decoded) == _never_indexed(headers)
        assert theirs.header_table_size == ours.header_table_size


@given(blocks=BLOCKS, huffman=st.booleans())
@settings(max_examples=300, deadline=None)
def test_we_decode_what_hpack_encodes(
    blocks: list[tuple[int | None, list[tuple[bytes, bytes, bool]]]], huffman: bool
) -> None:
    theirs, ours, reference = hpack.Encoder(), hpack_codec.Decoder(), hpack.Decoder()
    for table_size, fields in blocks:
        if table_size is not None and table_size != theirs.header_table_size:
            theirs.header_table_size = table_size
        headers = _header_list(fields)
        block = theirs.encode(headers, huffman=huffman)
        decoded = ours.decode(block, raw=True)
        assert decoded == headers
        # hpack's encoder indexes a never-indexed field found in its table: compare the
        # representation with what hpack's decoder read.
        assert _never_indexed(decoded) == _never_indexed(reference.decode(block, raw=True))
        assert ours.header_table_size == theirs.header_table_size


@given(blocks=BLOCKS)
@settings(max_examples=100, deadline=None)
def test_text_fields_decode_as_hpack_does(
    blocks: list[tuple[int | None, list[tuple[bytes, bytes, bool]]]]
) -> None:
    encoder, ours, theirs = hpack.Encoder(), hpack_codec.Decoder(), hpack.Decoder()
    for _, fields in blocks:
        block = encoder.encode(_header_list(fields))
        assert _outcome(ours, block, raw=False) == _outcome(theirs, block, raw=False)


# -- malformed blocks ------------------------------------------------------------------------


def _outcome(
    decoder: hpack_codec.Decoder | hpack.Decoder, block: bytes, *, raw: bool = True
) -> tuple[str, object]:
    """What decoding does: the fields, or the type of the exception."""
    try:
        return "decoded", [tuple(field) for field in decoder.decode(block, raw=raw)]
    except Exception as error:  # any type: the two must raise the same
        return "raised", type(error)


def _decoders(
    *, max_header_list_size: int, max_allowed_table_size: int
) -> tuple[hpack_codec.Decoder, hpack.Decoder]:
    ours = hpack_codec.Decoder(max_header_list_size=max_header_list_size)
    theirs = hpack.Decoder(max_header_list_size=max_header_list_size)
    ours.max_allowed_table_size = theirs.max_allowed_table_size = max_allowed_table_size
    return ours, theirs


# Blocks that prime a dynamic table, then arbitrary octets, or a valid block with a few
# octets changed: where hpack fails, we fail with its exception type, else we agree.
@given(
    primer=st.lists(FIELDS, max_size=6),
    block=st.binary(max_size=48),
    changes=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=3),
    mutate=st.booleans(),
    max_header_list_size=st.sampled_from([64, 65536]),
    max_allowed_table_size=st.sampled_from([0, 100, 4096]),
)
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_malformed_blocks_fail_as_in_hpack(
    primer: list[tuple[bytes, bytes, bool]], block: bytes,
    changes: list[tuple[int, int]], mutate: bool, max_header_list_size: int,
    max_allowed_table_size: int,
) -> None:
    encoder = hpack.Encoder()
    ours, theirs = _decoders(max_header_list_size=65536, max_allowed_table_size=4096)
    first = encoder.encode(_header_list(primer))
    assert ours.decode(first, raw=True) == theirs.decode(first, raw=True)
    ours.max_header_list_size = theirs.max_header_list_size = max_header_list_size
    ours.max_allowed_table_size = theirs.max_allowed_table_size = max_allowed_table_size
    if mutate:
        changed = bytearray(encoder.encode(_header_list(primer)))
        for position, octet in changes:
            if changed:
                changed[position % len(changed)] = octet
        block = bytes(changed)
    assert _outcome(ours, block) == _outcome(theirs, block)


MALFORMED = {
    # Huffman strings (RFC 7541 5.2): EOS inside, padding over 7 bits, padding not all ones.
    "EOS in a Huffman string": (_hex("0085") + b"\xff\xff\xff\xff\xff" + _hex("00")),
    "padding of 8 bits": _hex("00 81 1f 82 1f ff"),  # "a" then a whole octet of ones
    "padding of zeros": _hex("00 81 18 81 1f"),  # "a" = 00011, padded 000
    # Integers (5.1): more than five continuation octets.
    "integer too long": _hex("ff ff ff ff ff ff ff 01"),
    # Indexes (2.3.3): 0, and past the end of the (empty) dynamic table.
    "index 0": _hex("80"),
    "index past the tables": _hex("be"),
    "name index past the tables": _hex("7f 01 01 61"),
    # Size updates (4.2, 6.3): after a field, above SETTINGS_HEADER_TABLE_SIZE.
    "size update after a field": _hex("82 20"),
    "size update above the limit": _hex("3f e1 3f"),  # 8,192
    # Strings running past the block.
    "string past the end": _hex("40 0a 61 62 63"),
    "value missing": _hex("40 01 61"),
    "integer cut short": _hex("7f"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_block_fails_with_hpacks_exception(case: str) -> None:
    ours, theirs = _decoders(max_header_list_size=65536, max_allowed_table_size=4096)
    outcome = _outcome(theirs, MALFORMED[case])
    assert outcome[0] == "raised"
    assert _outcome(ours, MALFORMED[case]) == outcome
    assert isinstance(outcome[1], type) and issubclass(outcome[1], hpack.HPACKError)


def test_table_not_shrunk_after_the_limit_dropped_fails() -> None:
    # Our SETTINGS lowered the table size; the peer's next block must shrink the table.
    ours, theirs = _decoders(max_header_list_size=65536, max_allowed_table_size=100)
    assert _outcome(theirs, _hex("82")) == ("raised", hpack.InvalidTableSizeError)
    assert _outcome(ours, _hex("82")) == ("raised", hpack.InvalidTableSizeError)
    assert hpack_codec.Decoder().decode(_hex("3f45 82"), raw=True) == [(b":method", b"GET")]


def test_oversized_header_list_fails() -> None:
    ours, theirs = _decoders(max_header_list_size=100, max_allowed_table_size=4096)
    block = hpack.Encoder().encode([(b"x-a", b"1" * 40), (b"x-b", b"2" * 40)])
    assert _outcome(theirs, block) == ("raised", hpack.OversizedHeaderListError)
    assert _outcome(ours, block) == ("raised", hpack.OversizedHeaderListError)


def test_invalid_utf8_fails_only_as_text() -> None:
    ours, theirs = _decoders(max_header_list_size=65536, max_allowed_table_size=4096)
    block = hpack.Encoder().encode([(b"x-a", b"\xff\xfe")], huffman=False)
    assert _outcome(ours, block, raw=False) == _outcome(theirs, block, raw=False) == (
        "raised", hpack.HPACKDecodingError)
    assert hpack_codec.Decoder().decode(block, raw=True) == [(b"x-a", b"\xff\xfe")]


def test_size_changes_between_blocks_are_signalled_smallest_first() -> None:
    encoder, decoder = hpack_codec.Encoder(), hpack.Decoder()
    decoder.decode(encoder.encode([(b"x-a", b"1")]), raw=True)
    encoder.header_table_size = 0
    encoder.header_table_size = 4096  # back, but the table must be emptied (RFC 7541 4.2)
    block = encoder.encode([(b"x-b", b"2")])
    assert block.startswith(_hex("20 3fe11f"))  # 0, then 4,096
    assert decoder.decode(block, raw=True) == [(b"x-b", b"2")]
    assert decoder.header_table.dynamic_entries == type(decoder.header_table.dynamic_entries)(
        [(b"x-b", b"2")])


def test_encoder_table_stays_small_whatever_the_client_allows() -> None:
    encoder, decoder = hpack_codec.Encoder(), hpack.Decoder()
    decoder.max_allowed_table_size = 1 << 30
    encoder.header_table_size = 1 << 30  # h2 passes the client's SETTINGS_HEADER_TABLE_SIZE
    assert encoder.header_table_size == hpack_codec.ENCODER_TABLE_LIMIT
    fields = [(b"x-request-id", b"%064d" % number) for number in range(200)]
    block = encoder.encode(fields)
    assert not block.startswith(_hex("3f"))  # no size update: 4,096 is where it started
    assert decoder.decode(block, raw=True) == fields
    assert decoder.header_table._current_size <= hpack_codec.ENCODER_TABLE_LIMIT
