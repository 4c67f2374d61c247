#!lua name=livegate
-- livegate's Redis functions. Loaded (or upgraded) by every instance at start; the version
-- below is compared with livegate_version() so an older instance never downgrades a newer one.
--
-- Keys of a channel share the hash tag {channel}, so they live on one Redis Cluster slot,
-- the same slot as the bare channel name that FCALL takes as its key.
--   <prefix>.meta.{ch}      hash: e = epoch, s = top offset, n / t = history size / ttl (ms) to read with
--   <prefix>.history.{ch}   stream: id "<offset>-0", fields t = publish time (ms), p = envelope
--   <prefix>.idem.{ch}.<k>  string "<offset>:<epoch>" for idempotent publishes
--   <prefix>.config         hash written by livegate at start: namespace history settings
-- Envelopes are msgpack arrays (see livegate/channels/redis/envelope.py):
--   version 1: {"p", offset, epoch, data, info_json, tags_json, time_ms}
--   version 2: {2, "p", offset, epoch, data, info_json, tags_json, time_ms}
-- Publishes write the version livegate asks for (option "envelope", negotiated between the
-- live instances), else the "envelope" field of <prefix>.config, else 1. History reads return
-- entries in the newest version the caller says it reads (1 when it says nothing).

local VERSION = 9

local function pack_publication(ev, offset, epoch, data, info, tags_json, ms)
  if ev >= 2 then return cmsgpack.pack({2, 'p', offset, epoch, data, info, tags_json, ms}) end
  return cmsgpack.pack({'p', offset, epoch, data, info, tags_json, ms})
end

-- A stored envelope as a version 1 reader expects it (exactly seven fields, no version).
local function as_version1(envelope)
  local t = cmsgpack.unpack(envelope)
  if type(t[1]) ~= 'number' then return envelope end  -- version 1 already: its first field is the kind
  return cmsgpack.pack({t[2], t[3], t[4], t[5], t[6], t[7], t[8]})
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), t
end

local function new_epoch(t)
  return string.format('%08x', (tonumber(t[1]) * 1000003 + tonumber(t[2])) % 4294967296)
end

-- Drop the oldest entries of a history stream that are past their TTL.
local function trim_expired(hist_key, cutoff)
  -- Fast path, taken on nearly every publish: the oldest entry is still fresh.
  local oldest = redis.call('XRANGE', hist_key, '-', '+', 'COUNT', 1)
  if #oldest == 0 or tonumber(oldest[1][2][2]) > cutoff then return end
  while true do
    local entries = redis.call('XRANGE', hist_key, '-', '+', 'COUNT', 32)
    if #entries == 0 then return end
    local first_valid = nil
    for _, entry in ipairs(entries) do
      local fields = entry[2]
      if tonumber(fields[2]) > cutoff then first_valid = entry[1] break end
    end
    if first_valid then
      redis.call('XTRIM', hist_key, 'MINID', first_valid)
      return
    end
    if #entries < 32 then
      redis.call('DEL', hist_key)  -- everything was expired
      return
    end
    -- ids are "<offset>-0": trim everything up to and including the last expired one
    local last = tonumber(string.match(entries[#entries][1], '^(%d+)'))
    redis.call('XTRIM', hist_key, 'MINID', (last + 1) .. '-0')
  end
end

local function namespace_of(channel, private_prefix, boundary)
  local rest = channel
  if private_prefix ~= '' and string.sub(rest, 1, #private_prefix) == private_prefix then
    rest = string.sub(rest, #private_prefix + 1)
  end
  if boundary == '' then return '' end
  local pos = string.find(rest, boundary, 1, true)
  if pos then return string.sub(rest, 1, pos - 1) end
  return ''
end

-- FCALL livegate_publish 1 <channel> <data> [<options-json>] [<info-json>]
-- options: prefix, idempotency_key, idempotent_ttl (s), tags {str:str}, envelope (version to write),
--          history_size, history_ttl (s), history_meta_ttl (s) (default: from <prefix>.config),
--          trusted (livegate's own publishes: data is known to be one-line JSON, not checked again)
-- Returns {offset, epoch}: 0 and "" when the channel keeps no history; {offset, epoch, 1} when
-- an earlier publish with the same idempotency key won (nothing was published again).
local function publish(keys, args)
  local channel = keys[1]
  local data = args[1]
  if channel == nil or channel == '' then return redis.error_reply('ERR livegate_publish: channel is empty') end
  if data == nil or data == '' then return redis.error_reply('ERR livegate_publish: data is empty') end
  local opts = {}
  if args[2] and args[2] ~= '' then
    local ok, decoded = pcall(cjson.decode, args[2])
    if not ok or type(decoded) ~= 'table' then
      return redis.error_reply('ERR livegate_publish: options must be a JSON object')
    end
    opts = decoded
  end
  if not opts['trusted'] then
    -- Clients read one message per line: raw newlines (JSON whitespace only) are dropped.
    if string.find(data, '\n', 1, true) or string.find(data, '\r', 1, true) then
      data = string.gsub(data, '[\r\n]', '')
    end
    if not pcall(cjson.decode, data) then return redis.error_reply('ERR livegate_publish: data must be JSON') end
  end
  local info = args[3] or ''
  local prefix = opts['prefix'] or 'livegate'
  local size = tonumber(opts['history_size'])
  local ttl = tonumber(opts['history_ttl'])
  local meta_ttl = tonumber(opts['history_meta_ttl'])
  if size ~= nil and (ttl == nil or size < 0 or ttl < 0) then
    return redis.error_reply('ERR livegate_publish: history_size needs history_ttl (both >= 0)')
  end
  local ev = tonumber(opts['envelope'])
  -- livegate's own publishes say which version to write; one that says nothing but is
  -- trusted comes from a release before versioned envelopes, which reads version 1 only.
  if ev == nil and opts['trusted'] then ev = 1 end
  if size == nil then
    local config_key = prefix .. '.config'
    local conf = redis.call('HMGET', config_key, 'private_prefix', 'namespace_boundary', 'history_meta_ttl', 'envelope')
    if ev == nil then ev = tonumber(conf[4]) end
    if not conf[2] then
      return redis.error_reply('ERR livegate_publish: no livegate config under prefix "' .. prefix .. '"')
    end
    local ns = namespace_of(channel, conf[1] or '', conf[2])
    local entry = redis.call('HGET', config_key, 'ns:' .. ns)
    if not entry then return redis.error_reply('ERR livegate_publish: unknown channel namespace "' .. ns .. '"') end
    local s, t, m = string.match(entry, '^(%d+) ([%d.]+) ([%d.]+)$')
    if not s then return redis.error_reply('ERR livegate_publish: bad config entry for namespace "' .. ns .. '"') end
    size, ttl, meta_ttl = tonumber(s), tonumber(t), tonumber(m)
    if meta_ttl == 0 then meta_ttl = tonumber(conf[3]) or 0 end
  end
  ttl = ttl or 0
  meta_ttl = meta_ttl or 0
  if ev == nil then ev = tonumber(redis.call('HGET', prefix .. '.config', 'envelope')) or 1 end
  local tag = '{' .. channel .. '}'
  local idem_key = nil
  if opts['idempotency_key'] and opts['idempotency_key'] ~= '' then
    idem_key = prefix .. '.idem.' .. tag .. '.' .. tostring(opts['idempotency_key'])
    local seen = redis.call('GET', idem_key)
    if seen then
      local o, e = string.match(seen, '^(%d+):(.*)$')
      return {tonumber(o), e, 1}  -- third element: suppressed, an earlier publish with this key won
    end
  end
  local ms, t = now_ms()
  local offset, epoch = 0, ''
  if size > 0 and ttl > 0 then
    local meta_key = prefix .. '.meta.' .. tag
    local hist_key = prefix .. '.history.' .. tag
    local ttl_ms = math.floor(ttl * 1000)
    local meta = redis.call('HMGET', meta_key, 'e', 'n', 't')
    epoch = meta[1]
    if not epoch then
      epoch = new_epoch(t)
      redis.call('HSET', meta_key, 'e', epoch)
      redis.call('DEL', hist_key)
    end
    if tonumber(meta[2]) ~= size or tonumber(meta[3]) ~= ttl_ms then
      redis.call('HSET', meta_key, 'n', size, 't', ttl_ms)  -- what reads trim to
    end
    offset = redis.call('HINCRBY', meta_key, 's', 1)
    if meta_ttl > 0 then redis.call('PEXPIRE', meta_key, math.floor(meta_ttl * 1000)) end
    local tags_json = ''
    if type(opts['tags']) == 'table' and next(opts['tags']) ~= nil then tags_json = cjson.encode(opts['tags']) end
    local envelope = pack_publication(ev, offset, epoch, data, info, tags_json, ms)
    -- Approximate trimming is much cheaper than exact; reads keep only the newest
    -- history_size entries and drop those past history_ttl, so clients see exact limits.
    redis.call('XADD', hist_key, 'MAXLEN', '~', size, offset .. '-0', 't', ms, 'p', envelope)
    redis.call('PEXPIRE', hist_key, ttl_ms)
    redis.call('PUBLISH', prefix .. '.client.' .. channel, envelope)
  else
    local tags_json = ''
    if type(opts['tags']) == 'table' and next(opts['tags']) ~= nil then tags_json = cjson.encode(opts['tags']) end
    redis.call('PUBLISH', prefix .. '.client.' .. channel, pack_publication(ev, 0, '', data, info, tags_json, ms))
  end
  if idem_key then
    local idem_ttl = tonumber(opts['idempotent_ttl']) or 300
    redis.call('SET', idem_key, offset .. ':' .. epoch, 'PX', math.floor(idem_ttl * 1000))
  end
  return {offset, epoch}
end

-- FCALL livegate_history 1 <channel> <prefix> <limit> <since-offset or ""> <reverse 0|1> <meta-ttl s> [<envelope version read>]
-- Returns {top, epoch, envelope...}, read atomically; creates the position when missing.
-- Only the newest history_size publications younger than history_ttl (as of the latest
-- publish, kept in the meta hash as n and t) are returned.
local function history(keys, args)
  local channel = keys[1]
  local prefix, limit, since, reverse, meta_ttl = args[1], tonumber(args[2]), args[3], args[4] == '1', tonumber(args[5]) or 0
  local reads = tonumber(args[6]) or 1
  local tag = '{' .. channel .. '}'
  local meta_key = prefix .. '.meta.' .. tag
  local hist_key = prefix .. '.history.' .. tag
  local ms, t = now_ms()
  local epoch = redis.call('HGET', meta_key, 'e')
  if not epoch then
    epoch = new_epoch(t)
    redis.call('HSET', meta_key, 'e', epoch)
    redis.call('DEL', hist_key)
  end
  if meta_ttl > 0 then redis.call('PEXPIRE', meta_key, math.floor(meta_ttl * 1000)) end
  local meta = redis.call('HMGET', meta_key, 's', 'n', 't')
  local top, size, ttl_ms = tonumber(meta[1] or '0'), tonumber(meta[2] or '0'), tonumber(meta[3] or '0')
  local out = {top, epoch}
  if limit == 0 then return out end
  if ttl_ms > 0 then trim_expired(hist_key, ms - ttl_ms) end
  local low = 1
  if size > 0 then low = math.max(1, top - size + 1) end  -- the oldest offset history_size allows
  local high = top
  if since ~= '' then
    local s = tonumber(since)
    if reverse then high = math.min(high, s - 1) else low = math.max(low, s + 1) end
  end
  if low > high then return out end
  local count = {}
  if limit > 0 then count = {'COUNT', limit} end
  local entries
  if reverse then
    entries = redis.call('XREVRANGE', hist_key, high .. '-0', low .. '-0', unpack(count))
  else
    entries = redis.call('XRANGE', hist_key, low .. '-0', high .. '-0', unpack(count))
  end
  for _, entry in ipairs(entries) do
    local envelope = entry[2][4]
    if reads < 2 then envelope = as_version1(envelope) end
    table.insert(out, envelope)
  end
  return out
end

-- FCALL livegate_presence_add 1 <channel> <prefix> <client> <info-json> <ttl s>
local function presence_add(keys, args)
  local tag = '{' .. keys[1] .. '}'
  local hash_key = args[1] .. '.presence.' .. tag
  local zset_key = args[1] .. '.presence.expire.' .. tag
  local ttl = tonumber(args[4])
  local ms = now_ms()
  redis.call('ZADD', zset_key, ms + ttl * 1000, args[2])
  redis.call('HSET', hash_key, args[2], args[3])
  redis.call('PEXPIRE', zset_key, math.floor(ttl * 1000))
  redis.call('PEXPIRE', hash_key, math.floor(ttl * 1000))
  return 1
end

-- FCALL livegate_presence_remove 1 <channel> <prefix> <client>
local function presence_remove(keys, args)
  local tag = '{' .. keys[1] .. '}'
  redis.call('HDEL', args[1] .. '.presence.' .. tag, args[2])
  redis.call('ZREM', args[1] .. '.presence.expire.' .. tag, args[2])
  return 1
end

-- FCALL livegate_presence 1 <channel> <prefix>  -> {client, info, client, info, ...} (expired entries dropped)
local function presence_get(keys, args)
  local tag = '{' .. keys[1] .. '}'
  local hash_key = args[1] .. '.presence.' .. tag
  local zset_key = args[1] .. '.presence.expire.' .. tag
  local ms = now_ms()
  local expired = redis.call('ZRANGEBYSCORE', zset_key, '-inf', ms)
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', zset_key, '-inf', ms)
    redis.call('HDEL', hash_key, unpack(expired))
  end
  return redis.call('HGETALL', hash_key)
end

local function version()
  return VERSION
end

redis.register_function('livegate_publish', publish)
redis.register_function('livegate_history', history)
redis.register_function('livegate_presence_add', presence_add)
redis.register_function('livegate_presence_remove', presence_remove)
redis.register_function('livegate_presence', presence_get)
redis.register_function{function_name = 'livegate_version', callback = version, flags = {'no-writes'}}
