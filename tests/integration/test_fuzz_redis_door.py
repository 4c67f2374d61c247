"""The Redis function door fuzzed against the HTTP API's parser: `FCALL livegate_publish`
accepts exactly the JSON text livegate.protocol.jsontext accepts (RFC 8259, UTF-8, nested at
most MAX_DEPTH deep), so nothing it takes can put into a frame what a strict parser refuses.

`make test` runs a bounded number of examples; `make fuzz` runs many more
(LIVEGATE_FUZZ_EXAMPLES)."""

from __future__ import annotations

import json
import os

import orjson
import pytest
import redis
from conftest import REDIS_URL, unique_prefix
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livegate.channels.redis.functions import LIBRARY
from livegate.protocol.jsontext import MAX_DEPTH, depth_within, is_json

EXAMPLES = int(os.environ.get("LIVEGATE_FUZZ_EXAMPLES", "300"))

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)

# Pieces that JSON parsers disagree about, or that are not JSON at all.
TRICKY = ["NaN", "Infinity", "-Infinity", "0x10", "01", "1.", ".5", "+1", "1e", "1.e5", "-", ",", "]", "}", "[", "{",
          ":", '"', "\\", "\\ud83d", "\\udc00", "\\u12", "\\x41", "\\/", "\t", "\r", "\n", "\x00", "\x01", "\x7f",
          "\xff", "\xc0\xaf", "\xed\xa0\x80", "é", "😀", "tru", "nul", "true", "null", "false", "1e400", " ", "''"]


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    value = draw(JSON_VALUES)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1])))
    raw = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        piece = draw(st.sampled_from(TRICKY)).encode("utf-8", "surrogateescape") \
            if draw(st.booleans()) else bytes([draw(st.integers(0, 255))])
        at = draw(st.integers(0, len(raw)))
        cut = draw(st.integers(0, min(2, len(raw) - at)))
        raw = raw[:at] + piece + raw[at + cut:]
    return raw


@pytest.fixture(scope="module")
def door():
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()  # fails, never skips, when Redis is not reachable
    version = client.fcall_ro("livegate_version", 0) if _loaded(client) else 0
    if int(version) < int(LIBRARY.split("local VERSION = ")[1].split()[0]):
        client.function_load(LIBRARY, replace=True)
    prefix = unique_prefix()
    client.hset(f"{prefix}.config", mapping={"private_prefix": "$", "namespace_boundary": ":", "history_meta_ttl": "0",
                                            "ns:": "0 0.000 0.000", "max_publication_size": "65536"})
    options = orjson.dumps({"prefix": prefix})

    def accepts(data: bytes) -> bool:
        try:
            client.fcall("livegate_publish", 1, "fuzz", data, options)
            return True
        except redis.ResponseError as exc:
            assert "data must be JSON" in str(exc) or "data is empty" in str(exc), exc
            return False

    yield accepts
    client.delete(f"{prefix}.config")
    client.close()


def _loaded(client: redis.Redis) -> bool:
    try:
        client.fcall_ro("livegate_version", 0)
        return True
    except redis.ResponseError:
        return False


def python_accepts(data: bytes) -> bool:
    return bool(data) and is_json(data) and depth_within(data.decode("utf-8"), MAX_DEPTH)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=documents())
def test_the_redis_door_accepts_exactly_what_the_api_accepts(door, data):
    assert door(data) == python_accepts(data), data


@pytest.mark.parametrize("data", [b'"\\ud83d"', b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, b'{"a":[1,2.5e-3,"\\u00e9"]}',
                                  b' {"pretty":\n  [1,\n 2]\n}\n', b"1.", b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
                                  b'"a\nb"', b'"tab\tinside"', b"\t[1]\t"])
def test_known_cases_agree(door, data):
    assert door(data) == python_accepts(data)
