"""Limits: token buckets for commands (per connection and per user) and for new connections
(per node), and the node's connection limit.

A token bucket holds at most ``burst`` tokens and gains ``rate`` tokens a second; every
command takes one from each bucket that applies to it, and is refused (error 111) when one of
them is empty. A bucket is kept as one number, the time at which it will be full again
(the generic cell rate algorithm): taking a token moves that time on by ``1 / rate``, and a
bucket has no token left when that time would lie more than ``burst / rate`` ahead. So a
connection's budget is a few floats and a check allocates nothing but them.

Commands come in classes (``COMMAND_CLASS``); ``total`` counts every command. Each connection
has its own buckets (``client.rate_limit.<class>``); each user, its own shared by the user's
connections on this node (``client.rate_limit.user.<class>``). A connection refused
``client.rate_limit.disconnect_after`` times in a row is closed with 3013.

What a node shares between its connections (the parsed limits, users' buckets, the
connection-rate bucket) is its ``NodeLimits`` (``node.limits``). Memory per connection is kept
small: a bucket's state is one double in an array, and a user gets shared buckets only once
it has a second connection on the node (before that, its one connection's buckets bound it).
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Iterable

from livegate.config import CommandRateLimits, Config, RateLimit, UserCommandRateLimits
from livegate.metrics import NodeMetrics

__all__ = [
    "Bucket", "CommandLimiter", "UserBudget", "LimitPolicy", "NodeLimits",
    "CLASSES", "COMMAND_CLASS", "REFUSED", "UNSUBSCRIBE_METHOD",
]

log = logging.getLogger("livegate.limits")

#: Command classes, by index; 0 (total) counts every command.
CLASSES = ("total", "publish", "rpc", "subscribe", "history")
TOTAL, PUBLISH, RPC, SUBSCRIBE, HISTORY = range(len(CLASSES))
#: The class of each method; any other method (connect, refresh, sub_refresh, ping) counts in total only.
COMMAND_CLASS: dict[str, int] = {
    "publish": PUBLISH,
    "rpc": RPC, "send": RPC,
    "subscribe": SUBSCRIBE, "unsubscribe": SUBSCRIBE,
    "history": HISTORY, "presence": HISTORY, "presence_stats": HISTORY,
}
#: An unsubscribe takes a token of the subscribe class when there is one, but is never refused
#: for want of one: refusing it would keep the subscription (and its pushes) alive, and SDKs
#: reconnect when an unsubscribe fails. Unsubscribes still drain the class, so churn is held
#: back at the next subscribe; they are refused by ``total`` like any command.
UNSUBSCRIBE_METHOD = "unsubscribe"
#: What ``Bucket.take`` returns when the bucket is empty.
REFUSED = -1.0
#: A refusal is logged at most this often per node (a flood must not flood the log too).
LOG_EVERY = 3.0


class Bucket:
    """The shape of a token bucket: ``burst`` tokens at most, ``rate`` more a second. Its state
    (``full_at``, the time it is full again) is kept by whoever owns the bucket; 0.0 is full."""

    __slots__ = ("rate", "burst", "interval", "window")

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.interval = 1.0 / rate
        # The last of ``burst`` tokens taken at one instant must fit despite rounding.
        self.window = burst * self.interval * (1 + 1e-9)

    @classmethod
    def of(cls, limit: RateLimit) -> Bucket | None:
        return cls(limit.rate, limit.capacity) if limit.enabled else None

    def take(self, full_at: float, now: float) -> float:
        """The bucket's ``full_at`` after taking one token at ``now``; ``REFUSED`` when it has
        none left (then nothing was taken)."""
        after = (full_at if full_at > now else now) + self.interval
        return after if after - now <= self.window else REFUSED

    def tokens(self, full_at: float, now: float) -> float:
        """Tokens left at ``now`` (fractions included)."""
        ahead = full_at - now
        return float(self.burst) if ahead <= 0 else max(0.0, (self.window - ahead) * self.rate)


class LimitPolicy:
    """The command buckets of a config, by class index (None: no limit)."""

    __slots__ = ("connection", "user", "disconnect_after", "connection_names", "user_names", "enabled")

    def __init__(self, limits: CommandRateLimits) -> None:
        self.connection = _buckets(limits)
        self.user = _buckets(limits.user)
        self.disconnect_after = limits.disconnect_after
        # Metric labels, made once: refusing allocates nothing either.
        self.connection_names = CLASSES
        self.user_names = tuple(f"user_{name}" for name in CLASSES)
        self.enabled = any(b is not None for b in (*self.connection, *self.user))


def _buckets(limits: CommandRateLimits | UserCommandRateLimits) -> tuple[Bucket | None, ...]:
    return tuple(Bucket.of(getattr(limits, name)) for name in CLASSES)


_FULL = [0.0] * len(CLASSES)


class UserBudget:
    """The buckets of one user on this node, shared by the user's connections here."""

    __slots__ = ("full_at", "refs")

    def __init__(self) -> None:
        self.full_at = array("d", _FULL)
        self.refs = 0


class CommandLimiter:
    """One connection's command budget (its own buckets, and its user's when it has one)."""

    __slots__ = ("policy", "full_at", "user", "refused")

    def __init__(self, policy: LimitPolicy) -> None:
        self.policy = policy
        self.full_at = array("d", _FULL)  # doubles in place: no float object per bucket
        self.user: UserBudget | None = None
        #: Commands refused in a row.
        self.refused = 0

    def check(self, method: str, now: float) -> str | None:
        """Take a token for ``method`` from every bucket that applies; None when the command
        may run, else the name of the limit that refused it (nothing is taken then)."""
        policy = self.policy
        klass = COMMAND_CLASS.get(method, TOTAL)
        buckets = policy.connection
        full_at = self.full_at
        total = buckets[TOTAL]
        new_total = new_class = new_user_total = new_user_class = 0.0
        if total is not None:
            new_total = total.take(full_at[TOTAL], now)
            if new_total == REFUSED:
                return self._refused(policy.connection_names[TOTAL])
        own = buckets[klass] if klass else None
        if own is not None:
            new_class = own.take(full_at[klass], now)
            if new_class == REFUSED:
                if method != UNSUBSCRIBE_METHOD:
                    return self._refused(policy.connection_names[klass])
                own = None  # see UNSUBSCRIBE_METHOD
        user = self.user
        user_total = user_class = None
        if user is not None:
            ubuckets = policy.user
            user_total = ubuckets[TOTAL]
            if user_total is not None:
                new_user_total = user_total.take(user.full_at[TOTAL], now)
                if new_user_total == REFUSED:
                    return self._refused(policy.user_names[TOTAL])
            user_class = ubuckets[klass] if klass else None
            if user_class is not None:
                new_user_class = user_class.take(user.full_at[klass], now)
                if new_user_class == REFUSED:
                    if method != UNSUBSCRIBE_METHOD:
                        return self._refused(policy.user_names[klass])
                    user_class = None
        # Every bucket that applies had a token: take them all.
        if total is not None:
            full_at[TOTAL] = new_total
        if own is not None:
            full_at[klass] = new_class
        if user is not None:
            if user_total is not None:
                user.full_at[TOTAL] = new_user_total
            if user_class is not None:
                user.full_at[klass] = new_user_class
        self.refused = 0
        return None

    def _refused(self, name: str) -> str:
        self.refused += 1
        return name

    @property
    def exhausted(self) -> bool:
        """Refused so many commands in a row that the connection is to be closed (3013)."""
        after = self.policy.disconnect_after
        return after > 0 and self.refused >= after


class NodeLimits:
    """What one node's connections share: the command policy, users' buckets, the
    connection-rate bucket and the node's connection limit."""

    def __init__(self, config: Config, metrics: NodeMetrics) -> None:
        cfg = config.client
        self.metrics = metrics
        self.policy = LimitPolicy(cfg.rate_limit)
        self.connection_limit = cfg.connection_limit
        rate = cfg.connection_rate_limit
        self.connection_rate = Bucket(rate, rate) if rate else None
        self._connection_rate_full_at = 0.0
        self.users: dict[str, UserBudget] = {}
        self._logged_at: dict[str, float] = {}

    # -- new connections (the handshake) -----------------------------------------------

    def admit_connection(self, num_clients: int, now: float) -> str | None:
        """None when a new connection may open; else the limit that refuses it
        (``connection``: the node has ``client.connection_limit`` connections;
        ``connection_rate``: over ``client.connection_rate_limit`` a second), counted and logged."""
        if self.connection_limit and num_clients >= self.connection_limit:
            return self.refused("connection", now, allowed=self.connection_limit)
        bucket = self.connection_rate
        if bucket is not None:
            after = bucket.take(self._connection_rate_full_at, now)
            if after == REFUSED:
                return self.refused("connection_rate", now, allowed=bucket.burst)
            self._connection_rate_full_at = after
        return None

    def refused(self, name: str, now: float, **extra: object) -> str:
        """Count a refusal by limit ``name``; log it unless one was logged in the last LOG_EVERY seconds."""
        self.metrics.count(self.metrics.limited, name)
        last = self._logged_at.get(name)
        if last is None or now - last >= LOG_EVERY:
            self._logged_at[name] = now
            log.warning("limit reached: %s", name, extra={"limit": name, **extra})
        return name

    # -- command budgets -----------------------------------------------------------------

    def new_limiter(self) -> CommandLimiter | None:
        """A connection's budget; None when no command limit is configured."""
        return CommandLimiter(self.policy) if self.policy.enabled else None

    def join_user(self, limiter: CommandLimiter | None, user: str, others: Iterable[CommandLimiter | None]) -> None:
        """Share ``user``'s buckets between this connection and ``others``, the user's other
        connections on this node. Nothing is shared while a user has one connection (its own
        buckets are tighter than the user's); anonymous connections have no user buckets."""
        if limiter is None or not user or not any(self.policy.user):
            return
        siblings = [other for other in others if other is not None and other is not limiter]
        if not siblings:
            return
        budget = self.users.get(user)
        if budget is None:
            budget = self.users[user] = UserBudget()
        for member in (limiter, *siblings):
            if member.user is None:
                member.user = budget
                budget.refs += 1

    def leave_user(self, limiter: CommandLimiter | None, user: str) -> None:
        """The connection ends: the user's buckets go with the user's last connection here."""
        if limiter is None or limiter.user is None:
            return
        budget, limiter.user = limiter.user, None
        budget.refs -= 1
        if budget.refs <= 0 and self.users.get(user) is budget:
            del self.users[user]
