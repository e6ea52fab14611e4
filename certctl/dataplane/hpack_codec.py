"""HPACK (RFC 7541) header compression for the HTTP/2 server, compiled with mypyc.

`Encoder` and `Decoder` are the HTTP/2 server connection's (`h2_server`, one
pair per client connection). They have the interface of the pure-Python
`hpack` library's, so tests compare the two call for call:
`encode(headers, huffman=...)`, `header_table_size` on both,
`decode(data, raw=...)`, `max_header_list_size` and `max_allowed_table_size`
on the decoder; and they raise hpack's exception types, which `h2_server`
turns into connection errors (COMPRESSION_ERROR, or ENHANCE_YOUR_CALM for an
oversized header list).

Why faster than hpack's, beyond being compiled: the dynamic tables are
indexed by dicts (hpack searches its table linearly for every field sent),
Huffman decoding reads a whole byte per table step (hpack: a nibble), no log
call per field, and plain tuples come back instead of a `HeaderTuple`
constructed per field.

The static table (RFC 7541 Appendix A) and the Huffman code (Appendix B) are
read from the installed hpack package at import; the byte-at-a-time decoding
table is built from the code here.

Decoding is as strict as hpack's, exception for exception (tests/test_hpack_codec.py
compares the two on arbitrary input): EOS inside a Huffman string, padding longer
than 7 bits or not all ones, an integer over 5 continuation octets, an index
outside the tables, a size update after a field, above the allowed size, or
missing after that size shrank, a string running past the block, a header list
over `max_header_list_size` (counted as RFC 7541 4.1 entry sizes).

The encoder is our own choice where the RFC leaves one: its table holds at
most 4,096 octets whatever the client allows; a field is indexed
unless it is never-indexed (hpack's `NeverIndexedHeaderTuple`) or larger than
the whole table (whose insertion would empty the table); Huffman coding is used
unless it is longer; a table size change is signalled at the start of
the next block, the smallest size since the last block first (RFC 7541 4.2).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, cast

from hpack import exceptions, huffman_constants, struct, table

# A (name, value) field, typed as a tuple of any length so that mypyc keeps it a Python
# tuple: a `tuple[bytes, bytes]` is unpacked into a C struct and packed into a new tuple
# wherever it goes (a list, a dict key), which costs an allocation and loses the class of
# hpack's NeverIndexedHeaderTuple.
Field = tuple[bytes, ...]
# hpack's marker for a field that must never be indexed (RFC 7541 6.2.3), both ways.
_NEVER_INDEXED: Final = struct.NeverIndexedHeaderTuple
_STATIC: Final[tuple[Field, ...]] = table.HeaderTable.STATIC_TABLE
_STATIC_LENGTH: Final = len(_STATIC)  # 61
_DEFAULT_TABLE_SIZE: Final = 4096  # RFC 7540 6.5.2's initial SETTINGS_HEADER_TABLE_SIZE
# The most our encoder's table holds whatever the client allows (as nghttp2's default): a
# client announcing 4 GiB must not make each connection keep every response field it
# was sent (hpack's encoder would).
ENCODER_TABLE_LIMIT: Final = 4096
DEFAULT_MAX_HEADER_LIST_SIZE: Final = 65536  # as hpack's
_ENTRY_OVERHEAD: Final = 32  # RFC 7541 4.1
_MAX_CONTINUATION_SHIFT: Final = 35  # 5 continuation octets, as hpack allows


def _static_fields() -> dict[Field, int]:
    fields: dict[Field, int] = {}
    for index, field in enumerate(_STATIC, start=1):
        fields.setdefault(field, index)
    return fields


def _static_names() -> dict[bytes, int]:
    names: dict[bytes, int] = {}
    for index, (name, _) in enumerate(_STATIC, start=1):
        names.setdefault(name, index)
    return names


_STATIC_FIELDS: Final = _static_fields()
_STATIC_NAMES: Final = _static_names()

# -- Huffman code (RFC 7541 Appendix B) ----------------------------------------------------

_CODES: Final[list[int]] = list(huffman_constants.REQUEST_CODES)
_CODE_LENGTHS: Final[list[int]] = list(huffman_constants.REQUEST_CODES_LENGTH)
_EOS: Final = 256

# The decoding table: a state is an inner node of the code's tree (0: the root, where
# every symbol starts); entry `state << 8 | octet` says what that octet does there:
# the next state (bits 0-7), how many symbols it completes (0-2, bits 8-9: a code is
# at least 5 bits), the symbols (bits 10-17, 18-25), and _FAIL when it reaches EOS.
_FAIL: Final = 1 << 26


def _huffman_tree() -> tuple[list[int], list[int]]:
    """The code's tree: children[2 * node + bit] is an inner node (> 0) or the leaf
    of symbol s as -1 - s; ones[node] is the node's depth if the path to it is all ones
    (a prefix of EOS, valid padding up to 7 bits), else -1."""
    children = [0, 0]
    ones = [0]
    for symbol in range(_EOS + 1):
        code, length = _CODES[symbol], _CODE_LENGTHS[symbol]
        node = 0
        for depth in range(length - 1, 0, -1):
            bit = (code >> depth) & 1
            child = children[2 * node + bit]
            if child == 0:
                child = len(ones)
                children[2 * node + bit] = child
                children += [0, 0]
                parent_ones = ones[node]
                ones.append(parent_ones + 1 if bit and parent_ones >= 0 else -1)
            node = child
        children[2 * node + (code & 1)] = -1 - symbol
    return children, ones


def _huffman_decoding_table() -> tuple[list[int], list[bool]]:
    children, ones = _huffman_tree()
    states = len(ones)  # 256 inner nodes for 257 symbols
    # Per nibble first (at most one symbol in 4 bits), then octets as two nibbles.
    nibbles: list[int] = []
    for state in range(states):
        for nibble in range(16):
            node, entry = state, 0
            for shift in (3, 2, 1, 0):
                child = children[2 * node + ((nibble >> shift) & 1)]
                if child > 0:
                    node = child
                    continue
                symbol = -1 - child
                if symbol == _EOS:
                    entry = _FAIL
                    break
                entry = 1 << 8 | symbol << 10
                node = 0
            nibbles.append(entry if entry & _FAIL else entry | node)
    octets: list[int] = []
    for state in range(states):
        for octet in range(256):
            high = nibbles[state << 4 | octet >> 4]
            if high & _FAIL:
                octets.append(_FAIL)
                continue
            low = nibbles[(high & 0xFF) << 4 | (octet & 0x0F)]
            if low & _FAIL:
                octets.append(_FAIL)
            elif not high & 0x300:
                octets.append(low)
            elif not low & 0x300:
                octets.append((high & ~0xFF) | (low & 0xFF))
            else:
                octets.append(2 << 8 | (high & 0x3FC00) | (low & 0x3FC00) << 8 | (low & 0xFF))
    accepting = [0 <= depth <= 7 for depth in ones]
    return octets, accepting


_HUFFMAN_TABLE, _HUFFMAN_ACCEPTING = _huffman_decoding_table()
_DECODE: Final[list[int]] = _HUFFMAN_TABLE
_ACCEPTING: Final[list[bool]] = _HUFFMAN_ACCEPTING


def huffman_decode(data: bytes, start: int, end: int) -> bytes:
    """The octets Huffman-coded in data[start:end]; HPACKDecodingError if invalid."""
    decoded = bytearray()
    state = 0
    for position in range(start, end):
        entry = _DECODE[state << 8 | data[position]]
        if entry & _FAIL:
            raise exceptions.HPACKDecodingError("Invalid Huffman string: EOS decoded")
        count = (entry >> 8) & 3
        if count:
            decoded.append((entry >> 10) & 0xFF)
            if count == 2:
                decoded.append((entry >> 18) & 0xFF)
        state = entry & 0xFF
    if not _ACCEPTING[state]:
        raise exceptions.HPACKDecodingError("Incomplete Huffman string: invalid padding")
    return bytes(decoded)


def huffman_length(data: bytes) -> int:
    """The octets `data` takes Huffman-coded."""
    bits = 0
    for octet in data:
        bits += _CODE_LENGTHS[octet]
    return (bits + 7) >> 3


def huffman_encode(data: bytes, out: bytearray) -> None:
    """Append `data` Huffman-coded, padded with the most significant bits of EOS."""
    pending = 0  # the bits not yet written, fewer than 8 between octets
    count = 0
    for octet in data:
        length = _CODE_LENGTHS[octet]
        pending = (pending << length) | _CODES[octet]
        count += length
        while count >= 8:
            count -= 8
            out.append((pending >> count) & 0xFF)
        pending &= (1 << count) - 1
    if count:
        out.append(((pending << (8 - count)) | (0xFF >> count)) & 0xFF)


# -- primitives (RFC 7541 5.1, 5.2) ----------------------------------------------------------


def encode_integer(out: bytearray, value: int, prefix_bits: int, flags: int) -> None:
    """Append `value` with an N-bit prefix, the first octet's other bits being `flags`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        out.append(flags | value)
        return
    out.append(flags | limit)
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _decode_integer(data: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
    """The integer at `position` and the position after it."""
    if position >= len(data):
        raise exceptions.HPACKDecodingError("Truncated header block: integer expected")
    limit = (1 << prefix_bits) - 1
    value = data[position] & limit
    position += 1
    if value < limit:
        return value, position
    shift = 0
    while True:
        if position >= len(data):
            raise exceptions.HPACKDecodingError("Truncated header block: integer cut short")
        octet = data[position]
        position += 1
        value += (octet & 0x7F) << shift
        if octet < 0x80:
            return value, position
        shift += 7
        if shift >= _MAX_CONTINUATION_SHIFT:
            raise exceptions.HPACKDecodingError("Variable integer representation is too long")


def _decode_string(data: bytes, position: int) -> tuple[bytes, int]:
    """The string literal at `position` and the position after it."""
    huffman = position < len(data) and data[position] >= 0x80
    length, position = _decode_integer(data, position, 7)
    end = position + length
    if end > len(data):
        raise exceptions.HPACKDecodingError("Truncated header block: string runs past it")
    if huffman:
        return huffman_decode(data, position, end), end
    return data[position:end], end


def _encode_string(out: bytearray, data: bytes, huffman: bool) -> None:
    if huffman and data:
        length = huffman_length(data)
        if length <= len(data):  # as RFC 7541's examples (C.6.2: "307", 3 octets either way)
            encode_integer(out, length, 7, 0x80)
            huffman_encode(data, out)
            return
    encode_integer(out, len(data), 7, 0)
    out += data


# -- encoder -------------------------------------------------------------------------------


class Encoder:
    """Encodes header lists into header blocks with one dynamic table (per connection)."""

    def __init__(self) -> None:
        self._max_size = _DEFAULT_TABLE_SIZE
        self._size = 0
        # Oldest first. Entries are numbered by insertion from 1: entry n has the
        # index 62 + _inserted - n (62: the newest) while it is in the table.
        self._entries: list[Field] = []
        self._inserted = 0
        self._evicted = 0
        self._fields: dict[Field, int] = {}  # field -> newest entry number
        self._names: dict[bytes, int] = {}  # name -> newest entry number
        self._size_changed = False  # a size update is owed at the next block ...
        self._smallest_size = 0  # ... the smallest size since the last one first

    @property
    def header_table_size(self) -> int:
        """The table's maximum size. h2 sets the peer's SETTINGS_HEADER_TABLE_SIZE; the
        table keeps to at most ENCODER_TABLE_LIMIT of it, and a change is signalled at
        the start of the next block."""
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"HPACK table size must not be negative, got {value}")
        value = min(value, ENCODER_TABLE_LIMIT)
        if self._size_changed:
            self._smallest_size = min(self._smallest_size, value)
        elif value != self._max_size:
            self._size_changed = True
            self._smallest_size = value
        self._max_size = value
        self._evict(0)

    def encode(self, headers: Iterable[Field], huffman: bool = True) -> bytes:
        """The header block for `headers` (bytes names and values, in order)."""
        out = bytearray()
        if self._size_changed:
            self._size_changed = False
            if self._smallest_size < self._max_size:
                encode_integer(out, self._smallest_size, 5, 0x20)
            encode_integer(out, self._max_size, 5, 0x20)
        for field in headers:
            name, value = field
            if isinstance(field, _NEVER_INDEXED):
                self._literal(out, name, value, huffman=huffman, flags=0x10, prefix_bits=4)
                continue
            index = _STATIC_FIELDS.get(field, 0)
            if index:
                encode_integer(out, index, 7, 0x80)
                continue
            number = self._fields.get(field, -1)
            if number >= 0:
                encode_integer(out, _STATIC_LENGTH + 1 + self._inserted - number, 7, 0x80)
                continue
            size = _ENTRY_OVERHEAD + len(name) + len(value)
            if size > self._max_size:  # indexing it would empty the table
                self._literal(out, name, value, huffman=huffman, flags=0, prefix_bits=4)
                continue
            self._literal(out, name, value, huffman=huffman, flags=0x40, prefix_bits=6)
            self._add(field, size)
        return bytes(out)

    def _literal(
        self, out: bytearray, name: bytes, value: bytes, *, huffman: bool, flags: int,
        prefix_bits: int,
    ) -> None:
        index = _STATIC_NAMES.get(name, 0)
        if not index:
            number = self._names.get(name, -1)
            if number >= 0:
                index = _STATIC_LENGTH + 1 + self._inserted - number
        if index:
            encode_integer(out, index, prefix_bits, flags)
        else:
            out.append(flags)
            _encode_string(out, name, huffman)
        _encode_string(out, value, huffman)

    def _add(self, field: Field, size: int) -> None:
        self._evict(size)
        number = self._inserted + 1
        self._inserted = number
        self._entries.append(field)
        self._fields[field] = number
        self._names[field[0]] = number
        self._size += size

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until `room` more octets fit."""
        while self._entries and self._size + room > self._max_size:
            name, value = field = self._entries.pop(0)
            self._evicted += 1
            number = self._evicted
            if self._fields.get(field, -1) == number:
                del self._fields[field]
            if self._names.get(name, -1) == number:
                del self._names[name]
            self._size -= _ENTRY_OVERHEAD + len(name) + len(value)


# -- decoder -------------------------------------------------------------------------------


class Decoder:
    """Decodes header blocks with one dynamic table (per connection)."""

    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        # Decoded fields over this size (RFC 7541 4.1 sizes) raise OversizedHeaderListError.
        self.max_header_list_size = max_header_list_size
        # The largest size update accepted: our SETTINGS_HEADER_TABLE_SIZE once acknowledged.
        self.max_allowed_table_size = _DEFAULT_TABLE_SIZE
        self._max_size = _DEFAULT_TABLE_SIZE
        self._size = 0
        self._entries: list[Field] = []  # oldest first

    @property
    def header_table_size(self) -> int:
        """The table's current maximum size (the encoder's last size update)."""
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._max_size = value
        self._evict(0)

    def decode(
        self, data: bytes, raw: bool = False
    ) -> list[tuple[bytes, bytes]] | list[tuple[str, str]]:
        """The header list in the block `data`, as (name, value) bytes if `raw` else
        UTF-8 strings; never-indexed fields come as hpack's `NeverIndexedHeaderTuple`."""
        headers: list[Field] = []
        list_size = 0
        position = 0
        end = len(data)
        field: Field
        while position < end:
            first = data[position]
            if first & 0x80:  # indexed field
                index, position = _decode_integer(data, position, 7)
                field = self._field(index)
            elif first & 0x40:  # literal, added to the table
                index, position = _decode_integer(data, position, 6)
                name, value, position = self._literal(data, index, position)
                field = (name, value)
                self._add(field)
            elif first & 0x20:  # dynamic table size update
                if headers:
                    raise exceptions.HPACKDecodingError(
                        "Table size update not at the start of the block")
                size, position = _decode_integer(data, position, 5)
                if size > self.max_allowed_table_size:
                    raise exceptions.InvalidTableSizeError(
                        f"Table size update to {size}, above the allowed "
                        f"{self.max_allowed_table_size}")
                self.header_table_size = size
                continue
            else:  # literal, not added (0x10: never to be)
                index, position = _decode_integer(data, position, 4)
                name, value, position = self._literal(data, index, position)
                field = (name, value)
                if first & 0x10:  # not a conditional expression: mypyc would unpack it
                    field = _NEVER_INDEXED(name, value)
            headers.append(field)
            list_size += _ENTRY_OVERHEAD + len(field[0]) + len(field[1])
            if list_size > self.max_header_list_size:
                raise exceptions.OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} has been received")
        if self._max_size > self.max_allowed_table_size:
            raise exceptions.InvalidTableSizeError(
                "Encoder did not shrink table size to within the max")
        if raw:
            return cast("list[tuple[bytes, bytes]]", headers)
        return _text(headers)

    def _field(self, index: int) -> Field:
        if 0 < index <= _STATIC_LENGTH:
            return _STATIC[index - 1]
        dynamic = len(self._entries) - (index - _STATIC_LENGTH)
        if index > _STATIC_LENGTH and dynamic >= 0:
            return self._entries[dynamic]
        raise exceptions.InvalidTableIndex(f"Invalid table index {index}")

    def _literal(self, data: bytes, index: int, position: int) -> tuple[bytes, bytes, int]:
        """A literal's name (indexed if `index`) and value, and the position after it."""
        if index:
            name = self._field(index)[0]
        else:
            name, position = _decode_string(data, position)
        value, position = _decode_string(data, position)
        return name, value, position

    def _add(self, field: Field) -> None:
        size = _ENTRY_OVERHEAD + len(field[0]) + len(field[1])
        if size > self._max_size:  # RFC 7541 4.4: the table is emptied, nothing added
            self._entries.clear()
            self._size = 0
            return
        self._evict(size)
        self._entries.append(field)
        self._size += size

    def _evict(self, room: int) -> None:
        while self._entries and self._size + room > self._max_size:
            name, value = self._entries.pop(0)
            self._size -= _ENTRY_OVERHEAD + len(name) + len(value)


def _text(headers: list[Field]) -> list[tuple[str, str]]:
    """`decode(raw=False)`'s fields: UTF-8 text, of the same tuple types."""
    fields: list[tuple[str, str]] = []
    try:
        for field in headers:
            name, value = field[0].decode(), field[1].decode()
            if isinstance(field, _NEVER_INDEXED):
                # hpack's types say bytes, but its raw=False fields are text like these.
                fields.append(cast("tuple[str, str]", _NEVER_INDEXED(name, value)))
            else:
                fields.append((name, value))
    except UnicodeDecodeError as error:
        raise exceptions.HPACKDecodingError("Unable to decode headers as UTF-8") from error
    return fields
