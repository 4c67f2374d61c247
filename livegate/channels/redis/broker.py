"""The redis engine's Broker: publish (through the Redis function, atomically with history),
join/leave, subscriptions, history reads and map channels (livegate_map_* functions), each
routed to the channel's shard."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from livegate.channels.broker import (
    MAP_UNWRITTEN_TTL,
    HistoryOptions,
    HistoryResult,
    MapSettings,
    MapStateResult,
    MapUpdateResult,
    MapWriteOptions,
    PublishOptions,
    PublishResult,
)
from livegate.channels.redis.envelope import ENVELOPE_VERSION, EnvelopeError, decode_envelope, encode_presence_event
from livegate.channels.redis.shard import UNAVAILABLE, Shard
from livegate.errors import BrokerError, BrokerUnavailable
from livegate.protocol.types import ClientInfo, Publication, StreamPosition
from livegate.sharding import PUBLISH_FUNCTION

__all__ = ["RedisBroker"]

#: Lua reads numbers as doubles: a larger COUNT would reach Redis as "9.2e+18" and be refused.
_MAX_COUNT = (1 << 31) - 1

#: Most entries one livegate_map_expire call removes; map_expire calls again while there are more.
MAP_EXPIRE_BATCH = 1000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisBroker:
    def __init__(self, prefix: str, shard_for: Callable[[str], Shard], shards: Sequence[Shard] = ()) -> None:
        self.prefix = prefix
        self.client_prefix = f"{prefix}.client.".encode()
        self._shard_for = shard_for
        self._shards = shards  # every server, for map_expire
        #: The envelope version written (negotiated with the other nodes; see cluster.py).
        self.write_version = 1

    def _checked(self, channel: str) -> Shard:
        shard = self._shard_for(channel)
        shard.check()
        return shard

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        options: dict[str, Any] = {
            "prefix": self.prefix,
            "envelope": self.write_version,
            "history_size": opts.history_size if opts.history_ttl > 0 else 0,
            "history_ttl": opts.history_ttl,
            "history_meta_ttl": opts.history_meta_ttl,
            "format": opts.data_format,
        }
        if opts.idempotency_key:
            options["idempotency_key"] = opts.idempotency_key
            options["idempotent_ttl"] = opts.idempotent_result_ttl
        if opts.tags:
            options["tags"] = opts.tags
        info = opts.info.to_json() if opts.info is not None else b""
        reply = await self._shard_for(channel).fcall(PUBLISH_FUNCTION, channel, data, orjson.dumps(options), info)
        offset, epoch = reply[0], reply[1]
        return PublishResult(StreamPosition(int(offset), epoch.decode() if isinstance(epoch, bytes) else epoch),
                             suppressed=len(reply) > 2)

    async def _publish_event(self, channel: str, envelope: bytes) -> None:
        shard = self._checked(channel)
        try:
            await shard.client.publish(self.client_prefix + channel.encode(), envelope)
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._publish_event(channel, encode_presence_event("j", info, self.write_version))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._publish_event(channel, encode_presence_event("l", info, self.write_version))

    async def subscribe(self, channel: str) -> None:
        await self._shard_for(channel).subscribe(self.client_prefix + channel.encode())

    async def unsubscribe(self, channel: str) -> None:
        self._shard_for(channel).unsubscribe(self.client_prefix + channel.encode())

    async def history(self, channel: str, opts: HistoryOptions) -> HistoryResult:
        since = "" if opts.since is None else str(opts.since.offset)
        reply = await self._shard_for(channel).fcall(
            "livegate_history", channel, self.prefix, min(opts.limit, _MAX_COUNT), since,
            "1" if opts.reverse else "0", f"{opts.meta_ttl:g}", ENVELOPE_VERSION, f"{opts.unpublished_ttl:g}")
        top, epoch, *envelopes = reply
        position = StreamPosition(int(top), epoch.decode() if isinstance(epoch, bytes) else epoch)
        pubs: list[Publication] = []
        for raw in envelopes:
            try:
                decoded = decode_envelope(raw)
            except EnvelopeError as exc:
                raise BrokerError(f"redis: history of {channel!r}: {exc}") from None
            if decoded[0] == "p":
                pubs.append(decoded[1])
        return HistoryResult(pubs, position)

    async def remove_history(self, channel: str) -> None:
        shard = self._checked(channel)
        try:
            await shard.client.delete(f"{self.prefix}.history.{{{channel}}}")
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None

    # -- map channels ----------------------------------------------------------------------

    def _decode(self, channel: str, raw: bytes) -> Publication:
        try:
            decoded = decode_envelope(raw)
        except EnvelopeError as exc:
            raise BrokerError(f"redis: map entry of {channel!r}: {exc}") from None
        if decoded[0] != "p":
            raise BrokerError(f"redis: map entry of {channel!r} is not a publication")
        return decoded[1]

    def _map_options(self, opts: MapWriteOptions) -> bytes:
        s = opts.settings
        options: dict[str, Any] = {
            "prefix": self.prefix,
            "stream_size": s.stream_size,
            "stream_ttl": s.stream_ttl,
            "meta_ttl": s.meta_ttl,
            "key_ttl": s.key_ttl,
            "format": opts.data_format,
        }
        if opts.idempotency_key:
            options["idempotency_key"] = opts.idempotency_key
            options["idempotent_ttl"] = opts.idempotent_result_ttl
        if opts.tags:
            options["tags"] = opts.tags
        if opts.key_mode:
            options["key_mode"] = opts.key_mode
        if opts.expected is not None:
            options["expected_offset"] = opts.expected.offset
            options["expected_epoch"] = opts.expected.epoch
        if opts.refresh_ttl_on_suppress:
            options["refresh_ttl_on_suppress"] = True
        return orjson.dumps(options)

    def _update_result(self, channel: str, reply: list[Any]) -> MapUpdateResult:
        position = StreamPosition(int(reply[0]), _text(reply[1]))
        if len(reply) < 3:
            return MapUpdateResult(position)
        current = self._decode(channel, reply[3]) if len(reply) > 3 else None
        return MapUpdateResult(position, True, _text(reply[2]), current)

    async def map_publish(self, channel: str, key: str, data: bytes, opts: MapWriteOptions) -> MapUpdateResult:
        info = opts.info.to_json() if opts.info is not None else b""
        reply = await self._shard_for(channel).fcall("livegate_map_publish", channel, key, data,
                                                     self._map_options(opts), info)
        return self._update_result(channel, reply)

    async def map_remove(self, channel: str, key: str, opts: MapWriteOptions) -> MapUpdateResult:
        info = opts.info.to_json() if opts.info is not None else b""
        reply = await self._shard_for(channel).fcall("livegate_map_remove", channel, key, self._map_options(opts), info)
        return self._update_result(channel, reply)

    async def map_state(self, channel: str, settings: MapSettings, *, cursor: str = "", limit: int = 100,
                        key: str = "") -> MapStateResult:
        reply = await self._shard_for(channel).fcall(
            "livegate_map_state", channel, self.prefix, cursor, min(limit, _MAX_COUNT), key,
            f"{settings.meta_ttl or MAP_UNWRITTEN_TTL:g}")
        top, epoch, next_cursor, *envelopes = reply
        return MapStateResult([self._decode(channel, raw) for raw in envelopes],
                              StreamPosition(int(top), _text(epoch)), _text(next_cursor))

    async def map_stats(self, channel: str) -> int:
        return int(await self._shard_for(channel).fcall("livegate_map_stats", channel, self.prefix))

    async def map_clear(self, channel: str) -> None:
        await self._shard_for(channel).fcall("livegate_map_clear", channel, self.prefix)

    async def map_expire(self) -> int:
        """Expire due entries on every server that is up (one that is not is skipped); when
        a server fails, the others are still swept, then the first failure is raised."""
        removed = 0
        failure: BrokerError | None = None
        key = f"{self.prefix}.map.expiring"
        for shard in self._shards:
            if not shard.healthy:
                continue
            try:
                while True:
                    count, more = await shard.fcall("livegate_map_expire", key, self.prefix, MAP_EXPIRE_BATCH)
                    removed += int(count)
                    if not int(more):
                        break
            except BrokerError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return removed
