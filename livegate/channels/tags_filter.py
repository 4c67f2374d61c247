"""Tags filters: which publications a subscriber gets, by the publications' tags.

A subscriber sends a filter tree with its subscribe (``tf``), as Centrifugo v6.4+ takes it:

    {"op": "" | "and" | "or" | "not", "key", "cmp", "val", "vals": [...], "nodes": [...]}

A leaf (op "") compares the tag ``key``: ``eq``/``neq`` to ``val``, ``in``/``nin`` ``vals``,
``ex``/``nex`` (the tag is there or not), ``sw``/``ew``/``ct`` (starts with, ends with,
contains ``val``), ``gt``/``gte``/``lt``/``lte`` (as decimal numbers; a tag that is not a
number matches none of them). ``and``/``or`` need at least one node, ``not`` exactly one.

``compile_filter`` checks a tree once, at subscribe, and turns it into a function of the tags,
so that fan-out only calls it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["compile_filter", "FilterError", "TagsMatch", "MAX_NODES"]

TagsMatch = Callable[[Mapping[str, str] | None], bool]

#: A filter with more nodes than this, or more in/nin values in all, is refused.
MAX_NODES = 1024
MAX_VALUES = 16384
_EMPTY: Mapping[str, str] = {}
#: Numbers as Centrifugo compares them: plain decimals (no exponent, no spaces or underscores).
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


class FilterError(ValueError):
    """The filter tree is malformed (the subscribe is refused as a bad request)."""


def _number(text: str) -> Decimal | None:
    if not _DECIMAL.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except (InvalidOperation, ValueError):  # pragma: no cover - the pattern is a valid Decimal
        return None


def compile_filter(tree: Any) -> TagsMatch:
    """Check ``tree`` and return the function that says whether tags match it.

    Raises:
        FilterError: the tree is not a well-formed filter.
    """
    budget = [MAX_NODES, MAX_VALUES]
    match = _compile(tree, budget, 0)
    return lambda tags: match(tags if tags is not None else _EMPTY)


def _str(node: Mapping[str, Any], key: str) -> str:
    value = node.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FilterError(f"{key} must be a string")
    return value


def _compile(node: Any, budget: list[int], depth: int) -> Callable[[Mapping[str, str]], bool]:
    if not isinstance(node, Mapping):
        raise FilterError("a filter node must be an object")
    budget[0] -= 1  # other fields are ignored, as Centrifugo's decoder does
    if budget[0] < 0 or depth > 64:
        raise FilterError("filter too large")
    op = _str(node, "op")
    nodes = node.get("nodes") or []
    if not isinstance(nodes, list):
        raise FilterError("nodes must be a list")
    if op in ("and", "or", "not"):
        if op == "not" and len(nodes) != 1:
            raise FilterError("not needs exactly one node")
        if not nodes:
            raise FilterError(f"{op} needs at least one node")
        children = [_compile(child, budget, depth + 1) for child in nodes]
        if op == "not":
            child = children[0]
            return lambda tags: not child(tags)
        if op == "and":
            return lambda tags: all(c(tags) for c in children)
        return lambda tags: any(c(tags) for c in children)
    if op != "":
        raise FilterError(f"unknown filter op {op!r}")
    return _leaf(node, budget)  # a leaf's nodes are ignored, as Centrifugo does


def _leaf(node: Mapping[str, Any], budget: list[int]) -> Callable[[Mapping[str, str]], bool]:
    key, cmp, val = _str(node, "key"), _str(node, "cmp"), _str(node, "val")
    vals = node.get("vals") or []
    if not isinstance(vals, list) or not all(isinstance(v, str) for v in vals):
        raise FilterError("vals must be a list of strings")
    budget[1] -= len(vals)
    if budget[1] < 0:
        raise FilterError("filter too large")
    if not cmp:
        raise FilterError("a leaf needs cmp")
    if cmp in ("ex", "nex"):
        if val or vals:
            raise FilterError(f"{cmp} takes neither val nor vals")
    elif cmp in ("in", "nin"):
        if not vals or val:
            raise FilterError(f"{cmp} needs vals (and no val)")
    elif cmp in ("eq", "neq", "sw", "ew", "ct", "gt", "gte", "lt", "lte"):
        if not val or vals:
            raise FilterError(f"{cmp} needs val (and no vals)")
    else:
        raise FilterError(f"unknown comparison {cmp!r}")
    if not key and cmp not in ("ex", "nex"):
        raise FilterError("a leaf needs key")
    if cmp == "eq":
        return lambda tags: tags.get(key) == val
    if cmp == "neq":
        return lambda tags: tags.get(key) != val
    if cmp in ("in", "nin"):
        members = frozenset(vals)
        if cmp == "in":
            return lambda tags: tags.get(key, "") in members
        return lambda tags: tags.get(key, "") not in members
    if cmp == "ex":
        return lambda tags: key in tags
    if cmp == "nex":
        return lambda tags: key not in tags
    if cmp == "sw":
        return lambda tags: (tag := tags.get(key)) is not None and tag.startswith(val)
    if cmp == "ew":
        return lambda tags: (tag := tags.get(key)) is not None and tag.endswith(val)
    if cmp == "ct":
        return lambda tags: (tag := tags.get(key)) is not None and val in tag
    bound = _number(val)
    if bound is None:
        return lambda tags: False  # as Centrifugo: a bound that is not a number matches nothing
    compare: Callable[[Decimal], bool] = {
        "gt": lambda v: v > bound, "gte": lambda v: v >= bound,
        "lt": lambda v: v < bound, "lte": lambda v: v <= bound,
    }[cmp]

    def numeric(tags: Mapping[str, str]) -> bool:
        tag = tags.get(key)
        if tag is None:
            return False
        value = _number(tag)
        return value is not None and compare(value)

    return numeric
