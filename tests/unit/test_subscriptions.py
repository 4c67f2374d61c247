"""The pure parts of subscribing (livegate.session.subscriptions): which features a
subscription gets, and whether a recovery is exact."""

from __future__ import annotations

import pytest

from livegate.config import ChannelOptions
from livegate.protocol.commands import SubscribeRequest
from livegate.protocol.types import Publication, StreamPosition
from livegate.session.subscriptions import Features, Grant, decide_recovery, resolve_options

HISTORY = {"history_size": 10, "history_ttl": 60.0}


def features(opts: dict | None = None, grant: Grant | None = None, *, history_access: bool = False,
             presence_access: bool = False, **req) -> Features:
    return resolve_options(ChannelOptions(**(opts or {})), grant or Grant(), SubscribeRequest(channel="c", **req),
                           history_access=history_access, presence_access=presence_access)


def test_nothing_without_history_or_options():
    assert features(recoverable=True, positioned=True, join_leave=True) == Features(
        recoverable=False, positioned=False, presence=False, join_leave=False, push_join_leave=False)


def test_forced_recovery_implies_positioning():
    f = features({**HISTORY, "force_recovery": True})
    assert (f.recoverable, f.positioned) == (True, True)


@pytest.mark.parametrize(("opts", "history_access", "expected"), [
    ({}, False, False),                             # asked, but neither allowed nor history access
    ({"allow_recovery": True}, False, True),
    ({}, True, True),                               # history access lets a client recover
])
def test_recovery_on_request(opts, history_access, expected):
    f = features({**HISTORY, **opts}, recoverable=True, history_access=history_access)
    assert f.recoverable is expected and f.positioned is expected


def test_positioning_on_request_or_forced():
    assert features({**HISTORY, "allow_positioning": True}, positioned=True).positioned
    assert not features({**HISTORY, "allow_positioning": True}).positioned  # not asked
    assert features({**HISTORY, "force_positioning": True}).positioned
    assert not features({**HISTORY, "force_positioning": True}).recoverable


def test_history_is_needed_even_when_forced():
    # A namespace without history cannot recover or position, whatever a token says.
    grant = Grant(override={"force_recovery": {"value": True}, "force_positioning": {"value": True}})
    f = features({}, grant)
    assert (f.recoverable, f.positioned) == (False, False)


def test_overrides_win_both_ways():
    on = Grant(override={"presence": {"value": True}, "join_leave": {"value": True},
                         "force_push_join_leave": {"value": True}, "force_recovery": {"value": True}})
    f = features(HISTORY, on)
    assert (f.presence, f.join_leave, f.push_join_leave, f.recoverable) == (True, True, True, True)
    off = Grant(override={"presence": {"value": False}, "force_recovery": {"value": False}})
    f = features({**HISTORY, "presence": True, "force_recovery": True}, off)
    assert (f.presence, f.recoverable) == (False, False)
    junk = Grant(override={"presence": {"value": "yes"}, "join_leave": True})  # not {"value": bool}: ignored
    assert features({"presence": True}, junk).presence is True


@pytest.mark.parametrize(("opts", "req_join_leave", "presence_access", "expected"), [
    ({"join_leave": True}, True, True, True),
    ({"join_leave": True}, False, True, False),    # the client did not ask
    ({"join_leave": True}, True, False, False),    # no presence access
    ({"join_leave": True, "allow_presence_for_subscriber": True}, True, False, True),
    ({"join_leave": True, "force_push_join_leave": True}, False, False, True),
    ({}, True, True, False),                        # the namespace emits no joins
])
def test_join_leave_pushes(opts, req_join_leave, presence_access, expected):
    assert features(opts, join_leave=req_join_leave, presence_access=presence_access).push_join_leave is expected


def pubs(*offsets: int) -> list[Publication]:
    return [Publication(b"1", o) for o in offsets]


@pytest.mark.parametrize(("since", "top", "got", "limit", "expected"), [
    (StreamPosition(3, "e"), StreamPosition(5, "e"), pubs(4, 5), 10, True),
    (StreamPosition(5, "e"), StreamPosition(5, "e"), [], 10, True),          # nothing missed
    (StreamPosition(3, ""), StreamPosition(5, "e"), pubs(4, 5), 10, True),   # the client sent no epoch
    (StreamPosition(3, "old"), StreamPosition(5, "e"), pubs(4, 5), 10, False),  # history was lost
    (StreamPosition(3, "e"), StreamPosition(5, "e"), pubs(5), 10, False),    # 4 was trimmed away
    (StreamPosition(3, "e"), StreamPosition(5, "e"), pubs(4, 6), 10, False),  # a hole
    (StreamPosition(3, "e"), StreamPosition(6, "e"), pubs(4, 5), 10, False),  # does not reach the top
    (StreamPosition(0, "e"), StreamPosition(3, "e"), pubs(1, 2, 3), 2, False),  # more than the limit
    (StreamPosition(2, "e"), StreamPosition(5, "e"), [], 10, False),          # missed some, got none
])
def test_decide_recovery(since, top, got, limit, expected):
    assert decide_recovery(since, top, got, limit) is expected


@pytest.mark.parametrize(("channel", "namespace", "users"), [
    ("chat:#alice", "chat", ("alice",)),
    ("#org:42", "", ("org:42",)),            # the user boundary first: no namespace
    ("$#org:42", "", ("org:42",)),
    ("news#a,b", "", ("a", "b")),
    ("plain", "", None),
])
def test_a_user_boundary_before_the_namespace_boundary_means_no_namespace(channel, namespace, users):
    from conftest import make_config

    from livegate.channels.names import ChannelRules

    cfg = make_config({"channel": {"without_namespace": {"allow_user_limited_channels": True}}})
    resolved = ChannelRules(cfg.channel).resolve(channel)
    expected = cfg.channel.without_namespace if not namespace else next(
        ns for ns in cfg.channel.namespaces if ns.name == namespace)
    assert resolved.options is expected and resolved.allowed_users == users
