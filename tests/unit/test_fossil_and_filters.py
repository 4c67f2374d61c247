"""Fossil deltas (ours, checked against the centrifuge-python SDK's decoder) and tags filters."""

from __future__ import annotations

import os

import pytest
from centrifuge.fossil import apply_delta as sdk_apply_delta
from hypothesis import given, settings
from hypothesis import strategies as st

from livegate.channels.tags_filter import MAX_NODES, MAX_VALUES, FilterError, compile_filter
from livegate.protocol.fossil import DeltaError, apply_delta, checksum, create_delta

EXAMPLES = int(os.environ.get("LIVEGATE_FUZZ_EXAMPLES", "300"))


@st.composite
def edited(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A source and a target made from it by a few edits (what consecutive publications are)."""
    source = draw(st.binary(max_size=600))
    target = bytearray(source)
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(target)))
        cut = draw(st.integers(0, 20))
        target[at:at + cut] = draw(st.binary(max_size=24))
    return source, bytes(target)


@settings(max_examples=EXAMPLES, deadline=None)
@given(edited())
def test_the_sdk_decoder_turns_our_delta_into_the_target(pair: tuple[bytes, bytes]) -> None:
    source, target = pair
    delta = create_delta(source, target)
    assert sdk_apply_delta(source, delta) == target
    assert apply_delta(source, delta) == target


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_unrelated_payloads_still_round_trip(source: bytes, target: bytes) -> None:
    assert sdk_apply_delta(source, create_delta(source, target)) == target


def test_a_small_change_makes_a_small_delta() -> None:
    source = b'{"ticker":"ACME","price":101,"book":[' + b",".join(b'{"l":%d}' % i for i in range(40)) + b"]}"
    target = source.replace(b"101", b"102")
    delta = create_delta(source, target)
    assert len(delta) < len(target) / 5
    assert sdk_apply_delta(source, delta) == target


def test_checksum_agrees_with_the_sdk() -> None:
    from centrifuge.fossil import checksum as sdk_checksum
    for n in range(0, 40):
        data = os.urandom(n)
        assert checksum(data) == sdk_checksum(data)


@pytest.mark.parametrize("delta", [b"", b"5\n", b"3\n3:ab", b"3\n2@9,1;", b"2\n2:ab0;", b"2\n2:abZZ;", b"x\n"])
def test_a_broken_delta_is_refused(delta: bytes) -> None:
    with pytest.raises(DeltaError):
        apply_delta(b"source", delta)


TAGS = {"ticker": "ACME", "price": "101.5", "venue": "NYSE"}


@pytest.mark.parametrize(("tree", "expected"), [
    ({"key": "ticker", "cmp": "eq", "val": "ACME"}, True),
    ({"key": "ticker", "cmp": "eq", "val": "X"}, False),
    ({"key": "ticker", "cmp": "neq", "val": "X"}, True),
    ({"key": "missing", "cmp": "neq", "val": "X"}, True),
    ({"key": "venue", "cmp": "in", "vals": ["NASDAQ", "NYSE"]}, True),
    ({"key": "venue", "cmp": "nin", "vals": ["NASDAQ", "NYSE"]}, False),
    ({"key": "missing", "cmp": "in", "vals": [""]}, True),  # a missing tag compares as ""
    ({"key": "venue", "cmp": "ex"}, True),
    ({"key": "missing", "cmp": "nex"}, True),
    ({"key": "ticker", "cmp": "sw", "val": "AC"}, True),
    ({"key": "ticker", "cmp": "ew", "val": "ME"}, True),
    ({"key": "ticker", "cmp": "ct", "val": "CM"}, True),
    ({"key": "missing", "cmp": "ct", "val": "CM"}, False),
    ({"key": "price", "cmp": "gt", "val": "101"}, True),
    ({"key": "price", "cmp": "gte", "val": "101.5"}, True),
    ({"key": "price", "cmp": "lte", "val": "101.49"}, False),
    ({"key": "ticker", "cmp": "gt", "val": "1"}, False),  # not a number: no numeric match
    ({"key": "price", "cmp": "gt", "val": "abc"}, False),
    ({"key": "price", "cmp": "gt", "val": "NaN"}, False),
    ({"key": "price", "cmp": "lt", "val": "1e3"}, False),  # plain decimals only, as Centrifugo parses them
    ({"op": "and", "nodes": [{"key": "ticker", "cmp": "eq", "val": "ACME"},
                             {"key": "price", "cmp": "gt", "val": "100"}]}, True),
    ({"op": "or", "nodes": [{"key": "ticker", "cmp": "eq", "val": "X"},
                            {"key": "venue", "cmp": "eq", "val": "NYSE"}]}, True),
    ({"op": "not", "nodes": [{"key": "venue", "cmp": "eq", "val": "NYSE"}]}, False),
])
def test_filters_match_as_centrifugo_does(tree: dict, expected: bool) -> None:
    assert compile_filter(tree)(TAGS) is expected


def test_publications_without_tags_match_only_negative_filters() -> None:
    assert compile_filter({"key": "a", "cmp": "nex"})(None) is True
    assert compile_filter({"key": "a", "cmp": "eq", "val": "b"})(None) is False


@pytest.mark.parametrize("tree", [
    "eq", None, [], {"op": "xor", "nodes": [{"key": "a", "cmp": "ex"}]}, {"op": "and", "nodes": []},
    {"op": "not", "nodes": [{"key": "a", "cmp": "ex"}, {"key": "b", "cmp": "ex"}]},
    {"key": "a"}, {"key": "a", "cmp": "like", "val": "x"}, {"cmp": "eq", "val": "x"},
    {"key": "a", "cmp": "eq"}, {"key": "a", "cmp": "eq", "val": "x", "vals": ["y"]},
    {"key": "a", "cmp": "in", "vals": []}, {"key": "a", "cmp": "in", "vals": [1]},
    {"key": "a", "cmp": "ex", "val": "x"}, {"key": 1, "cmp": "ex"},
    {"op": "or", "nodes": [{"key": f"k{i}", "cmp": "ex"} for i in range(MAX_NODES + 1)]},
    {"key": "a", "cmp": "in", "vals": ["v"] * (MAX_VALUES + 1)},
])
def test_malformed_filters_are_refused(tree: object) -> None:
    with pytest.raises(FilterError):
        compile_filter(tree)


def test_what_centrifugo_ignores_is_ignored() -> None:
    """Unknown fields and a leaf's nodes are ignored; a long in-list is fine."""
    assert compile_filter({"key": "ticker", "cmp": "eq", "val": "ACME", "extra": 1})(TAGS) is True
    assert compile_filter({"key": "ticker", "cmp": "ex", "nodes": [{}]})(TAGS) is True
    tickers = [f"T{i}" for i in range(2000)] + ["ACME"]
    assert compile_filter({"key": "ticker", "cmp": "in", "vals": tickers})(TAGS) is True


@pytest.mark.parametrize("number", [" 10 ", "1_0", "1e3", "١٠", "inf", "0x10"])
def test_only_plain_decimals_compare_as_numbers(number: str) -> None:
    assert compile_filter({"key": "n", "cmp": "gt", "val": "5"})({"n": number}) is False
    assert compile_filter({"key": "n", "cmp": "gt", "val": "5"})({"n": "5.5"}) is True


def test_a_deeply_nested_filter_is_refused_not_a_recursion_error() -> None:
    tree: dict = {"key": "a", "cmp": "ex"}
    for _ in range(200):
        tree = {"op": "not", "nodes": [tree]}
    with pytest.raises(FilterError):
        compile_filter(tree)
