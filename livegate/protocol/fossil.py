"""Fossil deltas (the format of Fossil SCM's delta.c), for delta compression of publications.

A delta turns a source into a target:

    <target length>\\n  then commands  <n>@<offset>,   copy n bytes of the source from offset
                                       <n>:<bytes>    insert the next n bytes of the delta
                                       <checksum>;    end, with a checksum of the target

Integers are written in a base-64 alphabet of their own (``DIGITS``), most significant digit
first. The checksum is the sum, modulo 2**32, of the target read as big-endian 32-bit words
(the last, partial word padded with zero bytes).

``create_delta`` is ours: it indexes the source in blocks of ``BLOCK`` bytes, and walks the
target looking each window up; a hit is grown backwards (over bytes not yet emitted) and
forwards, and taken when a copy command is shorter than inserting the same bytes. Publications
are small (hundreds of bytes to a few KiB) and a delta is computed once per publication, not
per subscriber, so a straightforward dictionary of blocks is fast enough (see the README:
microseconds for typical payloads). ``apply_delta`` is the decoder, for tests and for
checking what we send.
"""

from __future__ import annotations

import struct

__all__ = ["create_delta", "apply_delta", "DeltaError", "checksum"]

DIGITS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
_VALUE = {c: i for i, c in enumerate(DIGITS)}
#: Source block size: matches shorter than this are not found (nor worth a copy command).
BLOCK = 16


class DeltaError(ValueError):
    """A delta that does not apply to the source it was given."""


def _int(n: int) -> bytes:
    if n == 0:
        return b"0"
    out = bytearray()
    while n:
        out.append(DIGITS[n & 63])
        n >>= 6
    out.reverse()
    return bytes(out)


def checksum(data: bytes) -> int:
    whole = len(data) & ~3
    total = sum(struct.unpack(f">{whole // 4}I", data[:whole])) if whole else 0
    tail = data[whole:]
    if tail:
        total += int.from_bytes(tail + b"\0" * (4 - len(tail)), "big")
    return total & 0xFFFFFFFF


def create_delta(source: bytes, target: bytes) -> bytes:
    """A delta that turns ``source`` into ``target``."""
    out = [_int(len(target)), b"\n"]
    n_tgt = len(target)
    literal_from = 0  # target bytes from here on are not emitted yet

    def insert(upto: int) -> None:
        if upto > literal_from:
            out.append(_int(upto - literal_from) + b":" + target[literal_from:upto])

    if len(source) >= BLOCK and n_tgt >= BLOCK:
        blocks: dict[bytes, int] = {}
        for offset in range(0, len(source) - BLOCK + 1, BLOCK):
            blocks.setdefault(source[offset:offset + BLOCK], offset)
        i = 0
        last = n_tgt - BLOCK
        while i <= last:
            src = blocks.get(target[i:i + BLOCK])
            if src is None:
                i += 1
                continue
            # Grow the match backwards over not-yet-emitted target bytes, then forwards.
            start_t, start_s = i, src
            while start_t > literal_from and start_s > 0 and target[start_t - 1] == source[start_s - 1]:
                start_t -= 1
                start_s -= 1
            end_t, end_s = i + BLOCK, src + BLOCK
            while end_t < n_tgt and end_s < len(source) and target[end_t] == source[end_s]:
                end_t += 1
                end_s += 1
            length = end_t - start_t
            command = _int(length) + b"@" + _int(start_s) + b","
            if len(command) >= length:  # inserting the bytes is no longer than copying them
                i += 1
                continue
            insert(start_t)
            out.append(command)
            literal_from = i = end_t
    insert(n_tgt)
    out.append(_int(checksum(target)) + b";")
    return b"".join(out)


def _read_int(delta: bytes, pos: int) -> tuple[int, int]:
    value, start = 0, pos
    while pos < len(delta) and delta[pos] in _VALUE:
        value = (value << 6) + _VALUE[delta[pos]]
        pos += 1
    if pos == start:
        raise DeltaError("expected a number")
    return value, pos


def apply_delta(source: bytes, delta: bytes) -> bytes:
    """The target ``delta`` makes of ``source``.

    Raises:
        DeltaError: the delta is malformed or does not fit the source.
    """
    limit, pos = _read_int(delta, 0)
    if delta[pos:pos + 1] != b"\n":
        raise DeltaError("size not terminated by a newline")
    pos += 1
    out = bytearray()
    while pos < len(delta):
        n, pos = _read_int(delta, pos)
        op = delta[pos:pos + 1]
        pos += 1
        if op == b"@":
            offset, pos = _read_int(delta, pos)
            if delta[pos:pos + 1] != b",":
                raise DeltaError("copy not terminated by a comma")
            pos += 1
            if offset + n > len(source) or len(out) + n > limit:
                raise DeltaError("copy out of range")
            out += source[offset:offset + n]
        elif op == b":":
            if pos + n > len(delta) or len(out) + n > limit:
                raise DeltaError("insert out of range")
            out += delta[pos:pos + n]
            pos += n
        elif op == b";":
            result = bytes(out)
            if len(result) != limit:
                raise DeltaError("size does not match")
            if n != checksum(result):
                raise DeltaError("bad checksum")
            return result
        else:
            raise DeltaError("unknown command")
    raise DeltaError("unterminated delta")
