"""Fossil deltas (the format of Fossil SCM's delta.c), for delta compression of publications.

A delta turns a source into a target:

    <target length>\\n  then commands  <n>@<offset>,   copy n bytes of the source from offset
                                       <n>:<bytes>    insert the next n bytes of the delta
                                       <checksum>;    end, with a checksum of the target

Integers are written in a base-64 alphabet of their own (``DIGITS``), most significant digit
first. The checksum is the sum, modulo 2**32, of the target read as big-endian 32-bit words
(the last, partial word padded with zero bytes).

``create_delta`` is ours: it copies the common prefix and suffix of source and target, then
indexes the source in blocks of ``BLOCK`` bytes and walks the changed middle of the target
looking each window up; a hit is grown backwards (over bytes not yet emitted) and forwards, and
taken when a copy command is shorter than inserting the same bytes. A delta is computed once
per publication, not per subscriber (see the README for its cost). ``apply_delta`` is the decoder, for tests and for
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


def _same_run(a: bytes, ai: int, b: bytes, bi: int, limit: int) -> int:
    """How many bytes from ``a[ai:]`` equal ``b[bi:]``, at most ``limit``: a binary search
    over slice comparisons (C loops), not a Python loop per byte."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[ai:ai + mid] == b[bi:bi + mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _same_tail(a: bytes, b: bytes, limit: int) -> int:
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:] == b[len(b) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return lo


#: The changed middle of a target larger than this is inserted as it is, not searched for
#: copies (the search is a Python loop per byte where nothing matches).
MAX_SEARCH = 16384


def create_delta(source: bytes, target: bytes) -> bytes:
    """A delta that turns ``source`` into ``target``.

    The common prefix and suffix are found first (the usual case for consecutive publications:
    a few fields changed); the middle of the target is then searched for blocks of the source."""
    n_src, n_tgt = len(source), len(target)
    out = [_int(n_tgt), b"\n"]
    head = _same_run(source, 0, target, 0, min(n_src, n_tgt))
    tail = _same_tail(source, target, min(n_src, n_tgt) - head)
    if head > BLOCK:
        out.append(_int(head) + b"@0,")
        literal_from = head
    else:
        literal_from = 0
    end = n_tgt - tail if tail > BLOCK else n_tgt  # the suffix is copied at the end

    def insert(upto: int) -> None:
        if upto > literal_from:
            out.append(_int(upto - literal_from) + b":" + target[literal_from:upto])

    if n_src >= BLOCK and end - literal_from >= BLOCK and end - literal_from <= MAX_SEARCH:
        blocks: dict[bytes, int] = {}
        for offset in range(0, n_src - BLOCK + 1, BLOCK):
            blocks.setdefault(source[offset:offset + BLOCK], offset)
        i = literal_from
        last = end - BLOCK
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
            grow = _same_run(target, i + BLOCK, source, src + BLOCK, min(end - i - BLOCK, n_src - src - BLOCK))
            end_t = i + BLOCK + grow
            length = end_t - start_t
            command = _int(length) + b"@" + _int(start_s) + b","
            if len(command) >= length:  # inserting the bytes is no longer than copying them
                i += 1
                continue
            insert(start_t)
            out.append(command)
            literal_from = i = end_t
    insert(end)
    if end < n_tgt:
        out.append(_int(tail) + b"@" + _int(n_src - tail) + b",")
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
