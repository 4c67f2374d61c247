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
--   <prefix>.user.conns.{u} zset: client id -> expiry time (ms) of each connection of user u on
--                           any node (client.user_connection_limit); the tag is the user id
-- Map channels (subscription_type "map"; see the map section below) add:
--   <prefix>.meta.{ch}      also m / mt = the map's stream size / stream ttl (ms) (expiry removals
--                           are written with them); m marks the channel as a map channel
--   <prefix>.map.{ch}       hash: entry key -> envelope of the entry's latest publication
--   <prefix>.mapkeys.{ch}   zset, every score 0: the entry keys in byte order (state pages)
--   <prefix>.mapexp.{ch}    zset: entry key -> expiry time (ms), for entries with a key_ttl
--   <prefix>.map.expiring   zset: channel -> (at most) its earliest entry expiry (ms)
-- Envelopes are msgpack arrays (see livegate/channels/redis/envelope.py):
--   version 1: {"p", offset, epoch, data, info_json, tags_json, time_ms}
--   version 2: {2, "p", offset, epoch, data, info_json, tags_json, time_ms}
--              {2, "p", offset, epoch, data, info_json, tags_json, time_ms, key, removed} (map channels,
--              always version 2: version 1 cannot carry the key)
-- Publishes write the version livegate asks for (option "envelope", negotiated between the
-- live instances), else the "envelope" field of <prefix>.config, else 1. History reads return
-- entries in the newest version the caller says it reads (1 when it says nothing).

local VERSION = 25

local function pack_publication(ev, offset, epoch, data, info, tags_json, ms, key, removed)
  if key then return cmsgpack.pack({2, 'p', offset, epoch, data, info, tags_json, ms, key, removed == true}) end
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

-- Strict JSON (RFC 8259), as livegate's other doors accept it: valid UTF-8, no NaN or
-- Infinity, no hex numbers, no trailing commas; lone surrogate escapes (\ud83d) are valid JSON
-- and pass. Arrays and objects nest at most max_depth deep. Returns nil when s is one JSON
-- value, else why not. Iterative (no recursion); plain runs are skipped with string.find.
-- (Library code runs with no globals at load time: string.* is looked up when called.)

local function utf8_error(s)
  local find, byte = string.find, string.byte
  local pos = find(s, '[\128-\255]')
  while pos do
    local c = byte(s, pos)
    local n, lo, hi = 0, 128, 191
    if c >= 194 and c <= 223 then n = 1
    elseif c == 224 then n, lo = 2, 160
    elseif (c >= 225 and c <= 236) or c == 238 or c == 239 then n = 2
    elseif c == 237 then n, hi = 2, 159  -- no encoded surrogates
    elseif c == 240 then n, lo = 3, 144
    elseif c >= 241 and c <= 243 then n = 3
    elseif c == 244 then n, hi = 3, 143
    else return 'invalid UTF-8' end
    for i = 1, n do
      local b = byte(s, pos + i)
      if not b then return 'invalid UTF-8' end
      if i == 1 then
        if b < lo or b > hi then return 'invalid UTF-8' end
      elseif b < 128 or b > 191 then return 'invalid UTF-8' end
    end
    pos = find(s, '[\128-\255]', pos + n + 1)
  end
  return nil
end

local ESCAPES = {[34] = true, [92] = true, [47] = true, [98] = true, [102] = true, [110] = true,
                 [114] = true, [116] = true}

local function strict_scan(s, max_depth)
  -- Globals are looked up once per call: Redis guards every global access of a function.
  local find, byte, sub = string.find, string.byte, string.sub
  local pos = 1
  local stack, depth = {}, 0   -- 123 '{' or 91 '[' per open container
  local want = 'value'         -- 'value' | 'key' | 'colon' | 'next' | 'done'
  local opened = false         -- a container just opened: its closing bracket may follow at once
  while true do
    pos = find(s, '[^ \t\n\r]', pos)
    if not pos then
      if want == 'done' then return nil end
      return 'unexpected end'
    end
    if want == 'done' then return 'extra data after the value' end
    local c = byte(s, pos)
    local closes = (c == 93 and stack[depth] == 91) or (c == 125 and stack[depth] == 123)
    if (want == 'next' or opened) and closes then
      depth = depth - 1
      pos = pos + 1
      want = depth == 0 and 'done' or 'next'
      opened = false
    elseif want == 'next' then
      if c ~= 44 then return "expected ',' or the end of the container" end
      pos = pos + 1
      want = stack[depth] == 123 and 'key' or 'value'
    elseif want == 'colon' then
      if c ~= 58 then return "expected ':'" end
      pos, want = pos + 1, 'value'
    elseif c == 123 or c == 91 then
      if want == 'key' then return 'expected a member name' end
      depth = depth + 1
      if depth > max_depth then return 'nested deeper than ' .. max_depth .. ' levels' end
      stack[depth] = c
      pos = pos + 1
      want = c == 123 and 'key' or 'value'
      opened = true
    elseif c == 34 then -- a string: jump from one quote, backslash or control character to the next
      pos = pos + 1
      while true do
        local q = find(s, '["\\%z\1-\31]', pos)
        if not q then return 'unterminated string' end
        local d = byte(s, q)
        if d == 34 then pos = q + 1 break end
        if d ~= 92 then return 'control character in a string' end
        local e = byte(s, q + 1)
        if e == 117 then
          if not find(s, '^%x%x%x%x', q + 2) then return 'bad \\u escape' end
          pos = q + 6
        elseif e and ESCAPES[e] then
          pos = q + 2
        else
          return 'bad escape'
        end
      end
      if want == 'key' then want = 'colon' else want = depth == 0 and 'done' or 'next' end
      opened = false
    elseif want == 'key' then
      return 'expected a member name'
    elseif c == 45 or (c >= 48 and c <= 57) then
      local _, e = find(s, '^-?%d+', pos)
      if not e then return 'bad number' end
      if find(s, '^-?0%d', pos) then return 'leading zero in a number' end
      local _, f = find(s, '^%.%d+', e + 1)
      if f then e = f elseif byte(s, e + 1) == 46 then return 'bad fraction' end
      local _, x = find(s, '^[eE][+-]?%d+', e + 1)
      if x then e = x elseif find(s, '^[eE]', e + 1) then return 'bad exponent' end
      pos = e + 1
      want = depth == 0 and 'done' or 'next'
      opened = false
    else
      local w = sub(s, pos, pos + 3)
      if w == 'true' or w == 'null' then pos = pos + 4
      elseif sub(s, pos, pos + 4) == 'false' then pos = pos + 5
      else return 'unexpected character' end
      want = depth == 0 and 'done' or 'next'
      opened = false
    end
  end
end

-- A number ending in a bare dot ("1.", "1.e5"): cjson takes it, JSON does not.
local function bare_dot(s)
  local find, byte = string.find, string.byte
  local pos = find(s, '%d%.')
  while pos do
    local after = byte(s, pos + 2)
    if not after or after < 48 or after > 57 then return pos end
    pos = find(s, '%d%.', pos + 2)
  end
  return nil
end

-- Fast path first: cjson (C), with invalid numbers (NaN, Infinity, hex, leading zeros) off and
-- the depth bounded (strict_cjson sets both around a whole call), refuses most of what is not
-- JSON. What it gets wrong goes to the exact scanner above: control characters and tabs in
-- strings and bare dots, which it takes, and lone surrogate escapes, which it refuses; UTF-8 it
-- does not look at, so that is checked here.
local function json_error(s, max_depth)
  local find = string.find
  if find(s, '[^ -~]') then  -- not only printable ASCII
    local err = utf8_error(s)
    if err then return err end
    if find(s, '[%z\1-\31]') then return strict_scan(s, max_depth) end
  end
  local ok, why = pcall(cjson.decode, s)
  if ok then
    if bare_dot(s) then return strict_scan(s, max_depth) end
    return nil
  end
  why = tostring(why)
  if find(why, 'unicode escape', 1, true) then return strict_scan(s, max_depth) end
  if find(why, 'too many nested', 1, true) then return 'nested deeper than ' .. max_depth .. ' levels' end
  return 'not JSON'
end

local MAX_DEPTH = 250

-- Runs fn(...) with cjson strict (no invalid numbers, bounded depth), then puts back the
-- settings other libraries in this Redis may rely on; once per call, however many
-- publications it validates.
local function strict_cjson(fn, ...)
  local numbers, depth = cjson.decode_invalid_numbers(), cjson.decode_max_depth()
  cjson.decode_invalid_numbers(false)
  cjson.decode_max_depth(MAX_DEPTH)
  local ok, result = pcall(fn, ...)
  cjson.decode_invalid_numbers(numbers)
  cjson.decode_max_depth(depth)
  if not ok then
    -- A Redis error (a table with err) goes back as Redis gave it (WRONGTYPE, OOM, ...), not
    -- re-raised, which would prefix it with ERR and a line number.
    if type(result) == 'table' and result.err then return result end
    error(result, 0)
  end
  return result
end

-- As livegate/channels/names.py: what comes before the first namespace boundary, unless the
-- user boundary comes first (namespace names cannot hold it: "#org:42" is a user channel
-- without a namespace).
local function namespace_of(channel, private_prefix, boundary, user_boundary)
  local rest = channel
  if private_prefix ~= '' and string.sub(rest, 1, #private_prefix) == private_prefix then
    rest = string.sub(rest, #private_prefix + 1)
  end
  if boundary == '' then return '' end
  local pos = string.find(rest, boundary, 1, true)
  if not pos then return '' end
  local ns = string.sub(rest, 1, pos - 1)
  if user_boundary ~= '' and string.find(ns, user_boundary, 1, true) then return '' end
  return ns
end

-- Options as JSON: {"prefix":"<name>"} alone (the common case) without a JSON decode.
local function parse_options(text)
  if text == nil or text == '' then return {} end
  local only_prefix = string.match(text, '^{"prefix":"([%w_.:-]*)"}$')
  if only_prefix then return {prefix = only_prefix} end
  if not string.find(text, '^[ \t\r\n]*{') then return nil end  -- an array decodes to a table too
  local ok, decoded = pcall(cjson.decode, text)
  if not ok or type(decoded) ~= 'table' then return nil end
  return decoded
end

-- What every publication of one call shares: the prefix, <prefix>.config (read once) and the
-- namespace entries looked up so far.
local function publish_context(opts)
  local prefix = opts['prefix'] or 'livegate'
  local config_key = prefix .. '.config'
  local conf = redis.call('HMGET', config_key, 'private_prefix', 'namespace_boundary', 'history_meta_ttl', 'envelope',
                          'max_publication_size', 'user_boundary')
  return {prefix = prefix, config_key = config_key, conf = conf, entries = {}}
end

-- The namespace's entry: "<history_size> <history_ttl> <history_meta_ttl> [<data format>]".
local function namespace_entry(ctx, ns)
  local entry = ctx.entries[ns]
  if entry == nil then
    entry = redis.call('HGET', ctx.config_key, 'ns:' .. ns) or false
    ctx.entries[ns] = entry
  end
  return entry or nil
end

-- Checks one publication (o: its options) and works out where it goes. Returns a table for
-- write_publication, or nil and why not. Writes nothing.
local function prepare_publication(ctx, channel, data, info, o)
  if channel == nil or channel == '' then return nil, 'channel is empty' end
  if data == nil then return nil, 'data is empty' end
  local conf = ctx.conf
  local size = tonumber(o['history_size'])
  local format = o['format']
  local entry, ns = nil, nil
  if conf[2] and (size == nil or format == nil) then
    ns = namespace_of(channel, conf[1] or '', conf[2], conf[6] or '')
    entry = namespace_entry(ctx, ns)
  end
  if format == nil then format = entry and string.match(entry, '^%d+ [%d.]+ [%d.]+ (%S+)$') or 'json' end
  if format ~= 'binary' then
    if data == '' then return nil, 'data is empty' end
    local why = json_error(data, MAX_DEPTH)
    if why then return nil, 'data must be JSON: ' .. why end
    if format == 'json_object' and not string.find(data, '^[ \t\r\n]*{') then
      return nil, 'data must be a JSON object in this namespace'
    end
    -- Clients read one message per line: raw newlines, which valid JSON has only as whitespace
    -- between tokens, are dropped.
    if string.find(data, '[\r\n]') then data = string.gsub(data, '[\r\n]', '') end
  end
  info = info or ''
  if info ~= '' then
    local why = json_error(info, MAX_DEPTH)
    if why or not string.find(info, '^[ \t\r\n]*{') then
      return nil, 'info must be a JSON object' .. (why and (': ' .. why) or '')
    end
    if string.find(info, '[\r\n]') then info = string.gsub(info, '[\r\n]', '') end
  end
  local tags_json = ''
  if o['tags'] ~= nil then
    if type(o['tags']) ~= 'table' then return nil, 'tags must be an object of strings' end
    for k, v in pairs(o['tags']) do
      if type(k) ~= 'string' or type(v) ~= 'string' or utf8_error(k) or utf8_error(v) then
        return nil, 'tags must be an object of strings'
      end
    end
    if next(o['tags']) ~= nil then tags_json = cjson.encode(o['tags']) end
  end
  local ttl = tonumber(o['history_ttl'])
  local meta_ttl = tonumber(o['history_meta_ttl'])
  if size ~= nil and (ttl == nil or size < 0 or ttl < 0) then
    return nil, 'history_size needs history_ttl (both >= 0)'
  end
  local ev = tonumber(o['envelope'])
  -- livegate's own publishes say which version to write; one that says nothing but sets
  -- "trusted" (which nothing honours any more) comes from a release before versioned
  -- envelopes, which reads version 1 only.
  if ev == nil and o['trusted'] then ev = 1 end
  if ev == nil then ev = tonumber(conf[4]) or 1 end
  local max_size = tonumber(conf[5])
  if max_size and #data > max_size then
    return nil, 'data is ' .. #data .. ' bytes, over max_publication_size (' .. max_size .. ')'
  end
  if size == nil then
    if not conf[2] then return nil, 'no livegate config under prefix "' .. ctx.prefix .. '"' end
    if not entry then return nil, 'unknown channel namespace "' .. ns .. '"' end
    local s, t, m = string.match(entry, '^(%d+) ([%d.]+) ([%d.]+)')
    if not s then return nil, 'bad config entry for namespace "' .. ns .. '"' end
    size, ttl, meta_ttl = tonumber(s), tonumber(t), tonumber(m)
    if meta_ttl == 0 then meta_ttl = tonumber(conf[3]) or 0 end
  end
  -- Checked here, before anything is written: a SET that fails after the XADD and PUBLISH
  -- would leave a publication out while the call reports an error.
  local idem = o['idempotency_key']
  if idem == nil or idem == '' or idem == false or idem == cjson.null then
    idem = nil
  elseif type(idem) == 'number' then
    idem = tostring(idem)  -- as before: the same key for the same number
  elseif type(idem) ~= 'string' then
    return nil, 'idempotency_key must be a string'
  end
  local idem_ttl = 300
  if o['idempotent_ttl'] ~= nil and o['idempotent_ttl'] ~= cjson.null then
    idem_ttl = tonumber(o['idempotent_ttl'])
    if idem_ttl == nil or idem_ttl ~= idem_ttl or idem_ttl < 0.001 or idem_ttl > 31536000 then
      return nil, 'idempotent_ttl must be a number of seconds from 0.001 to 31536000'
    end
  end
  return {channel = channel, data = data, info = info, tags_json = tags_json, ev = ev, size = size,
          ttl = ttl or 0, meta_ttl = meta_ttl or 0, idem = idem, idem_ttl = idem_ttl}
end

-- Appends a prepared publication to its channel's history (when kept) and publishes it.
-- ms and t: the call's time (TIME, read once per call).
local function write_publication(ctx, p, ms, t)
  local prefix, channel = ctx.prefix, p.channel
  local tag = '{' .. channel .. '}'
  local idem_key = nil
  if p.idem then
    idem_key = prefix .. '.idem.' .. tag .. '.' .. p.idem
    local seen = redis.call('GET', idem_key)
    if seen then
      local o, e = string.match(seen, '^(%d+):(.*)$')
      return {tonumber(o), e, 1}  -- third element: suppressed, an earlier publish with this key won
    end
  end
  local size, ttl, meta_ttl = p.size, p.ttl, p.meta_ttl
  local offset, epoch = 0, ''
  if size > 0 and ttl > 0 then
    local meta_key = prefix .. '.meta.' .. tag
    local hist_key = prefix .. '.history.' .. tag
    local ttl_ms = math.floor(ttl * 1000)
    local meta = redis.call('HMGET', meta_key, 'e', 'n', 't', 'x')
    epoch = meta[1]
    local covered = tonumber(meta[4]) or 0
    if not epoch then
      epoch = new_epoch(t)
      redis.call('HSET', meta_key, 'e', epoch)
      redis.call('DEL', hist_key, prefix .. '.map.' .. tag, prefix .. '.mapkeys.' .. tag, prefix .. '.mapexp.' .. tag)
      covered = 0
    end
    if tonumber(meta[2]) ~= size or tonumber(meta[3]) ~= ttl_ms then
      redis.call('HSET', meta_key, 'n', size, 't', ttl_ms)  -- what reads trim to
      covered = 0
    end
    offset = redis.call('HINCRBY', meta_key, 's', 1)
    -- Expiry: the history must live history_ttl, the position history_meta_ttl, after every
    -- publish. Both are set one and a half times ahead and renewed only once a publish is past
    -- the half ("x" in the meta hash: until when the current expiries cover a publish), so a
    -- busy channel pays two PEXPIREs once per half TTL instead of on every publish. (Reads
    -- extend the position's expiry only with GT, so they never shorten what this counts on;
    -- what a read returns is trimmed by time, so a key living longer changes no reply.)
    local meta_ms = meta_ttl > 0 and math.floor(meta_ttl * 1000) or 0
    if ms > covered then
      local half = ttl_ms
      if meta_ms > 0 and meta_ms < half then half = meta_ms end
      half = math.floor(half / 2)
      if meta_ms > 0 then redis.call('PEXPIRE', meta_key, meta_ms + math.floor(meta_ms / 2)) end
      redis.call('HSET', meta_key, 'x', ms + half)
      covered = -1  -- the history's expiry is renewed after the XADD below
    end
    local envelope = pack_publication(p.ev, offset, epoch, p.data, p.info, p.tags_json, ms)
    -- Approximate trimming is much cheaper than exact; reads keep only the newest
    -- history_size entries and drop those past history_ttl, so clients see exact limits.
    redis.call('XADD', hist_key, 'MAXLEN', '~', size, offset .. '-0', 't', ms, 'p', envelope)
    if covered == -1 then redis.call('PEXPIRE', hist_key, ttl_ms + math.floor(ttl_ms / 2)) end
    redis.call('PUBLISH', prefix .. '.client.' .. channel, envelope)
  else
    redis.call('PUBLISH', prefix .. '.client.' .. channel,
               pack_publication(p.ev, 0, '', p.data, p.info, p.tags_json, ms))
  end
  if idem_key then
    redis.call('SET', idem_key, offset .. ':' .. epoch, 'PX', math.floor(p.idem_ttl * 1000))
  end
  return {offset, epoch}
end

-- FCALL livegate_publish 1 <channel> <data> [<options-json>] [<info-json>]
-- options: prefix, idempotency_key, idempotent_ttl (s), tags {str:str}, envelope (version to write),
--          history_size, history_ttl (s), history_meta_ttl (s), format (the namespace's
--          publication_data_format) (default: from <prefix>.config),
--          (data is checked as the namespace's publication_data_format says: strict JSON by
--          default, a JSON object for "json_object", anything for "binary"; info is always a
--          JSON object; max_publication_size)
-- Returns {offset, epoch}: 0 and "" when the channel keeps no history; {offset, epoch, 1} when
-- an earlier publish with the same idempotency key won (nothing was published again).
local function publish_one(keys, args)
  local channel = keys[1]
  if channel == nil or channel == '' then return redis.error_reply('ERR livegate_publish: channel is empty') end
  if args[1] == nil then return redis.error_reply('ERR livegate_publish: data is empty') end
  local opts = parse_options(args[2])
  if opts == nil then return redis.error_reply('ERR livegate_publish: options must be a JSON object') end
  local ctx = publish_context(opts)
  local p, why = prepare_publication(ctx, channel, args[1], args[3], opts)
  if not p then return redis.error_reply('ERR livegate_publish: ' .. why) end
  local ms, t = now_ms()
  return write_publication(ctx, p, ms, t)
end

local function publish(keys, args)
  return strict_cjson(publish_one, keys, args)
end

-- FCALL livegate_publish_batch <n> <channel 1> .. <channel n> <options-json>
--       <data 1> <item-options-json 1> <info-json 1> .. <data n> <item-options-json n> <info-json n>
-- Several publications in one call: options (as livegate_publish's) hold for all of them; an
-- item's options ("" for none) add or override idempotency_key, idempotent_ttl and tags for
-- that publication. All or nothing: every publication is checked before any is written, and
-- the first that fails fails the call ("publication <i>: <why>"). Returns one
-- {offset, epoch[, 1]} per publication, in order; the config is read, the time taken and
-- cjson set up once per call, so a publication costs Redis less than in a call of its own.
local ITEM_OPTIONS = {idempotency_key = true, idempotent_ttl = true, tags = true}

local function publish_batch_unchecked(keys, args)
  local n = #keys
  if n == 0 then return redis.error_reply('ERR livegate_publish_batch: no publications') end
  if #args ~= 1 + 3 * n then
    return redis.error_reply('ERR livegate_publish_batch: expected options and then data, item options and info '
                             .. 'for each of the ' .. n .. ' channels (' .. (1 + 3 * n) .. ' arguments), got ' .. #args)
  end
  local opts = parse_options(args[1])
  if opts == nil then return redis.error_reply('ERR livegate_publish_batch: options must be a JSON object') end
  if opts['idempotency_key'] ~= nil and opts['idempotency_key'] ~= cjson.null and opts['idempotency_key'] ~= '' then
    -- One key for the whole call would suppress every later publication of a channel in it.
    return redis.error_reply('ERR livegate_publish_batch: idempotency_key belongs in the item options')
  end
  local ctx = publish_context(opts)
  local prepared = {}
  for i = 1, n do
    local base = 1 + 3 * (i - 1)
    local o = opts
    local item = args[base + 2]
    if item ~= nil and item ~= '' then
      local extra = parse_options(item)
      if extra == nil then
        return redis.error_reply('ERR livegate_publish_batch: publication ' .. i .. ': options must be a JSON object')
      end
      o = {}
      for k, v in pairs(opts) do o[k] = v end
      for k, v in pairs(extra) do
        if not ITEM_OPTIONS[k] then
          return redis.error_reply('ERR livegate_publish_batch: publication ' .. i .. ': option "' .. tostring(k)
                                   .. '" is for the whole call, not one publication')
        end
        o[k] = v
      end
    end
    local p, why = prepare_publication(ctx, keys[i], args[base + 1], args[base + 3], o)
    if not p then return redis.error_reply('ERR livegate_publish_batch: publication ' .. i .. ': ' .. why) end
    prepared[i] = p
  end
  local ms, t = now_ms()
  local results = {}
  for i = 1, n do results[i] = write_publication(ctx, prepared[i], ms, t) end
  return results
end

local function publish_batch(keys, args)
  return strict_cjson(publish_batch_unchecked, keys, args)
end

-- FCALL livegate_history 1 <channel> <prefix> <limit> <since-offset or ""> <reverse 0|1> <meta-ttl s>
--       [<envelope version read>] [<unpublished ttl s>: how long a read keeps the position of a
--       channel that has had no publication; 0 or absent: meta-ttl]
-- Returns {top, epoch, envelope...}, read atomically; creates the position when missing.
-- Only the newest history_size publications younger than history_ttl (as of the latest
-- publish, kept in the meta hash as n and t) are returned.
local function history(keys, args)
  local channel = keys[1]
  local prefix, limit, since, reverse, meta_ttl = args[1], tonumber(args[2]), args[3], args[4] == '1', tonumber(args[5]) or 0
  local reads = tonumber(args[6]) or 1
  local unpublished_ttl = tonumber(args[7]) or 0
  local tag = '{' .. channel .. '}'
  local meta_key = prefix .. '.meta.' .. tag
  local hist_key = prefix .. '.history.' .. tag
  local ms, t = now_ms()
  local epoch = redis.call('HGET', meta_key, 'e')
  if not epoch then
    epoch = new_epoch(t)
    redis.call('HSET', meta_key, 'e', epoch)
    redis.call('DEL', hist_key, prefix .. '.map.' .. tag, prefix .. '.mapkeys.' .. tag, prefix .. '.mapexp.' .. tag)
  end
  local meta = redis.call('HMGET', meta_key, 's', 'n', 't', 'm')
  local top, size, ttl_ms = tonumber(meta[1] or '0'), tonumber(meta[2] or '0'), tonumber(meta[3] or '0')
  local keep = meta_ttl
  if top == 0 and unpublished_ttl > 0 and not meta[4] then keep = unpublished_ttl end
  if keep > 0 then
    if top > 0 or meta[4] then
      -- Published: only ever extended here (GT), so publishes can count on their expiry. A map
      -- channel's entries live exactly as long as its position.
      redis.call('PEXPIRE', meta_key, math.floor(keep * 1000), 'GT')
      if meta[4] then
        for _, key in ipairs({'.map.', '.mapkeys.', '.mapexp.'}) do
          redis.call('PEXPIRE', prefix .. key .. tag, math.floor(keep * 1000), 'GT')
        end
      end
    else
      redis.call('PEXPIRE', meta_key, math.floor(keep * 1000))
    end
  end
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

-- Connections per user on every node, for client.user_connection_limit. The node holding a
-- connection refreshes its entry; an entry past its expiry (its node died) no longer counts.
local function user_conns_key(prefix, user)
  return prefix .. '.user.conns.{' .. user .. '}'
end

local function ttl_ms_of(arg)
  local ttl = tonumber(arg)
  if not ttl or ttl <= 0 then return nil end
  return math.floor(ttl * 1000)
end

-- The key lives as long as its longest-lived entry may.
local function keep_user_conns(key, ttl_ms)
  if redis.call('PTTL', key) < ttl_ms then redis.call('PEXPIRE', key, ttl_ms) end
end

-- FCALL livegate_user_connect 1 <user> <prefix> <client> <limit> <ttl s>
-- Counts the connection unless the user already has <limit> live ones (0: no limit), atomically.
-- Returns {1, count} when it counts (also when it already did), {0, count} when refused.
local function user_connect(keys, args)
  local key = user_conns_key(args[1], keys[1])
  local limit, ttl_ms = tonumber(args[3]) or 0, ttl_ms_of(args[4])
  if not ttl_ms then return redis.error_reply('ERR livegate_user_connect: ttl must be > 0') end
  local ms = now_ms()
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ms)
  local count = redis.call('ZCARD', key)
  if limit > 0 and count >= limit and not redis.call('ZSCORE', key, args[2]) then return {0, count} end
  redis.call('ZADD', key, ms + ttl_ms, args[2])
  keep_user_conns(key, ttl_ms)
  return {1, redis.call('ZCARD', key)}
end

-- FCALL livegate_user_refresh 1 <user> <prefix> <ttl s> <client> [<client> ...]
-- Extends the entries that are there; returns the client ids that are not (expired, or never
-- counted while Redis was away), for the node to add again if their connections still live.
-- Never adding here keeps a refresh racing a disconnect from bringing a closed connection back.
local function user_refresh(keys, args)
  local key = user_conns_key(args[1], keys[1])
  local ttl_ms = ttl_ms_of(args[2])
  if not ttl_ms then return redis.error_reply('ERR livegate_user_refresh: ttl must be > 0') end
  local ms = now_ms()
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ms)
  local missing = {}
  local found = false
  for i = 3, #args do
    if redis.call('ZSCORE', key, args[i]) then
      redis.call('ZADD', key, 'XX', ms + ttl_ms, args[i])
      found = true
    else
      missing[#missing + 1] = args[i]
    end
  end
  if found then keep_user_conns(key, ttl_ms) end
  return missing
end

-- FCALL livegate_user_disconnect 1 <user> <prefix> <client>
local function user_disconnect(keys, args)
  return redis.call('ZREM', user_conns_key(args[1], keys[1]), args[2])
end

-- FCALL livegate_user_connections 1 <user> <prefix>  -> the user's live connections on every node
local function user_connections(keys, args)
  local key = user_conns_key(args[1], keys[1])
  local ms = now_ms()
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ms)
  return redis.call('ZCARD', key)
end

-- Map channels (namespaces with subscription_type = "map"): a set of entries, key -> the
-- entry's latest publication, plus (stream_size > 0) a stream of the changes in the channel's
-- history stream, so livegate_history reads a map channel's changes as any channel's. Every
-- write or removal is one publication with a key (removed set for a removal): appended to the
-- stream (offsets +1 per change; 0 without a stream), stored in the map and PUBLISHed to
-- <prefix>.client.<channel>, all in one call. The entries, the stream and the position share
-- one lifetime: meta_ttl after the last write (forever when 0); a new epoch starts with an
-- empty map (every function that creates an epoch deletes the map keys). As memory.py's
-- map_* methods, the reference semantics.

local function map_keys(prefix, channel)
  local tag = '{' .. channel .. '}'
  return {meta = prefix .. '.meta.' .. tag, hist = prefix .. '.history.' .. tag, map = prefix .. '.map.' .. tag,
          keys = prefix .. '.mapkeys.' .. tag, exp = prefix .. '.mapexp.' .. tag,
          client = prefix .. '.client.' .. channel}
end

-- Channels with entries that expire, scored with (at most) their earliest expiry, so that
-- livegate_map_expire finds the channels with due keys without scanning. It has no {channel}
-- hash tag: in a Redis Cluster it would sit in another slot than the channels' keys. Each
-- shard of livegate's redis engine is a standalone Redis (channels are spread by jump hash),
-- where a function may touch any key, so that is fine here; it is not cluster-safe.
local function map_expiring_key(prefix)
  return prefix .. '.map.expiring'
end

-- The offset, tags_json and data of a stored entry envelope (either version).
local function entry_fields(envelope)
  local t = cmsgpack.unpack(envelope)
  if type(t[1]) == 'number' then return tonumber(t[3]) or 0, t[7] or '', t[5] or '' end
  return tonumber(t[2]) or 0, t[6] or '', t[4] or ''
end

local function map_new_epoch(k, t)
  local epoch = new_epoch(t)
  redis.call('HSET', k.meta, 'e', epoch)
  redis.call('DEL', k.hist, k.map, k.keys, k.exp)
  return epoch
end

-- The entry key's envelope, unless there is none or it is past its key_ttl (then the expiry
-- sweep removes it, with its removal publication).
local function live_entry(k, key, ms)
  local envelope = redis.call('HGET', k.map, key)
  if not envelope then return nil end
  local exp = redis.call('ZSCORE', k.exp, key)
  if exp and tonumber(exp) <= ms then return nil end
  return envelope
end

-- The map lives meta_ttl (ms) from now; without one (persistent), for ever: a position that a
-- read created with a short lifetime is kept once the map is written.
local function map_touch(k, meta_ms)
  if meta_ms > 0 then
    redis.call('PEXPIRE', k.meta, meta_ms)
    redis.call('PEXPIRE', k.map, meta_ms)
    redis.call('PEXPIRE', k.keys, meta_ms)
    redis.call('PEXPIRE', k.exp, meta_ms)
  else
    redis.call('PERSIST', k.meta)
    redis.call('PERSIST', k.map)
    redis.call('PERSIST', k.keys)
    redis.call('PERSIST', k.exp)
  end
end

local function map_set_expiry(k, prefix, channel, key, at)
  redis.call('ZADD', k.exp, at, key)
  redis.call('ZADD', map_expiring_key(prefix), 'LT', at, channel)
end

-- One change of an entry (s: the map's settings: size, ttl_ms, key_ttl_ms): appended to the
-- stream when the map keeps one, applied to the map, published. Returns the change's offset.
-- prev: the entry's value before this change (nil: none): only the PUBLISHed envelope carries
-- it (field 11), the base subscribers' per-key deltas are computed against.
local function map_write(k, s, prefix, channel, epoch, key, data, info, tags_json, removed, ms, prev)
  local offset = 0
  if s.size > 0 then offset = redis.call('HINCRBY', k.meta, 's', 1) end
  local envelope = pack_publication(2, offset, epoch, data, info, tags_json, ms, key, removed)
  if s.size > 0 and s.ttl_ms > 0 then
    redis.call('XADD', k.hist, 'MAXLEN', '~', s.size, offset .. '-0', 't', ms, 'p', envelope)
    redis.call('PEXPIRE', k.hist, s.ttl_ms + math.floor(s.ttl_ms / 2))
  end
  if removed then
    redis.call('HDEL', k.map, key)
    redis.call('ZREM', k.keys, key)
    redis.call('ZREM', k.exp, key)
  else
    redis.call('HSET', k.map, key, envelope)
    redis.call('ZADD', k.keys, 0, key)
    if s.key_ttl_ms > 0 then
      map_set_expiry(k, prefix, channel, key, ms + s.key_ttl_ms)
    else
      redis.call('ZREM', k.exp, key)
    end
  end
  if prev and not removed then
    envelope = cmsgpack.pack({2, 'p', offset, epoch, data, info, tags_json, ms, key, false, prev})
  end
  redis.call('PUBLISH', k.client, envelope)
  return offset
end

local function seconds_option(opts, name)
  local v = opts[name]
  if v == nil or v == cjson.null then return 0 end
  v = tonumber(v)
  if v == nil or v ~= v or v < 0 then return nil end
  return v
end

-- The map options of a write: {size, ttl_ms, meta_ms, key_ttl_ms, key_mode, expected_offset,
-- expected_epoch, refresh}, or nil and why not.
local function map_write_settings(opts)
  local s = {}
  local size = seconds_option(opts, 'stream_size')
  if size == nil then return nil, 'stream_size must be a number >= 0' end
  s.size = math.floor(size)
  for _, name in ipairs({'stream_ttl', 'meta_ttl', 'key_ttl'}) do
    local v = seconds_option(opts, name)
    if v == nil then return nil, name .. ' must be a number of seconds >= 0' end
    s[name] = v
  end
  s.ttl_ms = math.floor(s.stream_ttl * 1000)
  s.meta_ms = math.floor(s.meta_ttl * 1000)
  s.key_ttl_ms = math.floor(s.key_ttl * 1000)
  local mode = opts['key_mode']
  if mode == nil or mode == cjson.null then mode = '' end
  if mode ~= '' and mode ~= 'if_new' and mode ~= 'if_exists' then
    return nil, 'key_mode must be "", "if_new" or "if_exists"'
  end
  s.key_mode = mode
  local eo, ee = opts['expected_offset'], opts['expected_epoch']
  if eo ~= nil and eo ~= cjson.null then
    s.expected_offset = tonumber(eo)
    if s.expected_offset == nil then return nil, 'expected_offset must be a number' end
    if type(ee) ~= 'string' then return nil, 'expected_epoch must be a string' end
    s.expected_epoch = ee
  end
  s.refresh = opts['refresh_ttl_on_suppress'] == true
  return s
end

-- livegate_map_publish and livegate_map_remove. Returns {top, epoch} after a change;
-- {top, epoch, reason} when suppressed (reason: "idempotency", "key_exists", "key_not_found",
-- "position_mismatch"), with the current entry's envelope appended on "position_mismatch"
-- when there is one.
local function map_update(name, channel, key, data, options_text, info, removing)
  local function fail(why) return redis.error_reply('ERR ' .. name .. ': ' .. why) end
  if channel == nil or channel == '' then return fail('channel is empty') end
  if key == nil or key == '' then return fail('key is empty') end
  if data == nil then return fail('data is empty') end
  local opts = parse_options(options_text)
  if opts == nil then return fail('options must be a JSON object') end
  local s, bad = map_write_settings(opts)
  if not s then return fail(bad) end
  local ctx = publish_context(opts)
  -- The data and info are checked as livegate_publish checks them (a removal has no data).
  local p, why = prepare_publication(ctx, channel, data, info, {
    history_size = s.size, history_ttl = s.stream_ttl, history_meta_ttl = s.meta_ttl, envelope = 2,
    format = removing and 'binary' or opts['format'], tags = opts['tags'],
    idempotency_key = opts['idempotency_key'], idempotent_ttl = opts['idempotent_ttl']})
  if not p then return fail(why) end
  local prefix = ctx.prefix
  local k = map_keys(prefix, channel)
  local ms, t = now_ms()
  local idem_key = nil
  if p.idem then
    idem_key = prefix .. '.idem.{' .. channel .. '}.' .. p.idem
    local seen = redis.call('GET', idem_key)
    if seen then
      local o, e = string.match(seen, '^(%d+):(.*)$')
      return {tonumber(o), e, 'idempotency'}
    end
  end
  local meta = redis.call('HMGET', k.meta, 'e', 's', 'n', 't', 'm', 'mt')
  local epoch = meta[1]
  if not epoch then
    epoch = map_new_epoch(k, t)
    meta = {epoch, false, false, false, false, false}
  end
  local top = tonumber(meta[2]) or 0
  if tonumber(meta[5]) ~= s.size or tonumber(meta[6]) ~= s.ttl_ms then
    redis.call('HSET', k.meta, 'm', s.size, 'mt', s.ttl_ms)  -- for livegate_map_expire's removals
  end
  if s.size > 0 and (tonumber(meta[3]) ~= s.size or tonumber(meta[4]) ~= s.ttl_ms) then
    redis.call('HSET', k.meta, 'n', s.size, 't', s.ttl_ms)  -- what history reads trim to
  end
  local current = live_entry(k, key, ms)
  local current_offset, current_tags, current_data = 0, '', nil
  if current then current_offset, current_tags, current_data = entry_fields(current) end
  local reason = nil
  if not removing and s.key_mode == 'if_new' and current then
    reason = 'key_exists'
  elseif not removing and s.key_mode == 'if_exists' and not current then
    reason = 'key_not_found'
  elseif s.expected_offset ~= nil and (s.expected_epoch ~= epoch or s.expected_offset ~= current_offset) then
    map_touch(k, s.meta_ms)
    return {top, epoch, 'position_mismatch', current or nil}
  elseif removing and not current then
    reason = 'key_not_found'
  end
  if reason then
    if s.refresh and current and s.key_ttl_ms > 0 then
      map_set_expiry(k, prefix, channel, key, ms + s.key_ttl_ms)
    end
    map_touch(k, s.meta_ms)
    return {top, epoch, reason}
  end
  local tags_json = p.tags_json
  if removing and tags_json == '' then tags_json = current_tags end  -- a removal keeps the entry's tags
  local offset = map_write(k, s, prefix, channel, epoch, key, removing and '' or p.data, p.info, tags_json,
                           removing, ms, current_data)
  if s.size > 0 then top = offset end
  map_touch(k, s.meta_ms)
  if idem_key then
    redis.call('SET', idem_key, top .. ':' .. epoch, 'PX', math.floor(p.idem_ttl * 1000))
  end
  return {top, epoch}
end

-- FCALL livegate_map_publish 1 <channel> <key> <data> <options-json> [<info-json>]
-- options: prefix, envelope (ignored: map publications are always version 2), stream_size,
--          stream_ttl (s), meta_ttl (s), key_ttl (s), format, tags {str:str}, idempotency_key,
--          idempotent_ttl (s), key_mode ("", "if_new", "if_exists"), expected_offset and
--          expected_epoch (compare-and-set: the entry's offset, 0 when absent, and the epoch),
--          refresh_ttl_on_suppress (a write suppressed by key_mode renews the entry's key_ttl)
-- Data and info are checked as livegate_publish checks them.
local function map_publish(keys, args)
  return strict_cjson(map_update, 'livegate_map_publish', keys[1], args[1], args[2], args[3], args[4], false)
end

-- FCALL livegate_map_remove 1 <channel> <key> <options-json> [<info-json>]
-- options: as livegate_map_publish's (key_mode aside); without tags, the removal publication
-- carries the removed entry's.
local function map_remove(keys, args)
  return strict_cjson(map_update, 'livegate_map_remove', keys[1], args[1], '', args[2], args[3], true)
end

-- Up to 1000 values per command: Lua's unpack has a bounded stack.
local function hmget_all(key, names)
  local out = {}
  for i = 1, #names, 1000 do
    local chunk = {}
    for j = i, math.min(i + 999, #names) do chunk[#chunk + 1] = names[j] end
    local values = redis.call('HMGET', key, unpack(chunk))
    for _, v in ipairs(values) do out[#out + 1] = v end
  end
  return out
end

-- FCALL livegate_map_state 1 <channel> <prefix> <cursor> <limit> <key> [<meta-ttl s>]
-- Returns {top, epoch, next cursor, envelope...}: the live entries (past their key_ttl: not)
-- in key order after the cursor ("" from the start), at most limit (<= 0: all); the next cursor
-- is "" after the last page. With a key: only that entry (no envelope when there is none).
-- Creates the position when missing (with meta-ttl, when > 0, as its lifetime: a channel
-- nobody writes to leaves no lasting keys).
local function map_state(keys, args)
  local channel = keys[1]
  local prefix, cursor, limit, key = args[1], args[2] or '', tonumber(args[3]) or 0, args[4] or ''
  local meta_ttl = tonumber(args[5]) or 0
  local k = map_keys(prefix, channel)
  local ms, t = now_ms()
  local meta = redis.call('HMGET', k.meta, 'e', 's')
  local epoch = meta[1]
  if not epoch then
    epoch = map_new_epoch(k, t)
    if meta_ttl > 0 then redis.call('PEXPIRE', k.meta, math.floor(meta_ttl * 1000)) end
    return {0, epoch, ''}
  end
  local out = {tonumber(meta[2]) or 0, epoch, ''}
  if key ~= '' then
    local envelope = live_entry(k, key, ms)
    if envelope then out[4] = envelope end
    return out
  end
  local want = 0  -- 0: every entry
  if limit > 0 then want = limit + 1 end  -- one more tells whether another page follows
  local batch = 1000
  if want > 0 and want < batch then batch = want end
  local found = {}
  local low = '-'
  if cursor ~= '' then low = '(' .. cursor end
  while true do
    local names = redis.call('ZRANGE', k.keys, low, '+', 'BYLEX', 'LIMIT', 0, batch)
    if #names == 0 then break end
    local exps = redis.call('ZMSCORE', k.exp, unpack(names))
    for i, name in ipairs(names) do
      if not exps[i] or tonumber(exps[i]) > ms then
        found[#found + 1] = name
        if want > 0 and #found >= want then break end
      end
    end
    if (want > 0 and #found >= want) or #names < batch then break end
    low = '(' .. names[#names]
  end
  if want > 0 and #found >= want then
    found[#found] = nil
    out[3] = found[#found]
  end
  if #found == 0 then return out end
  for _, envelope in ipairs(hmget_all(k.map, found)) do
    if envelope then out[#out + 1] = envelope end
  end
  return out
end

-- FCALL livegate_map_stats 1 <channel> <prefix>  -> how many live entries the channel has
local function map_stats(keys, args)
  local k = map_keys(args[1], keys[1])
  if redis.call('EXISTS', k.meta) == 0 then return 0 end
  local ms = now_ms()
  return redis.call('ZCARD', k.keys) - redis.call('ZCOUNT', k.exp, '-inf', ms)
end

-- FCALL livegate_map_clear 1 <channel> <prefix>
-- Forgets the entries, the stream and the position (the next read starts a new epoch).
local function map_clear(keys, args)
  local k = map_keys(args[1], keys[1])
  redis.call('DEL', k.meta, k.hist, k.map, k.keys, k.exp)
  redis.call('ZREM', map_expiring_key(args[1]), keys[1])
  return 1
end

-- FCALL livegate_map_expire 1 <prefix>.map.expiring <prefix> [<most removals, default 1000>]
-- Removes the entries past their key_ttl of the channels of this server, each with a removal
-- publication (the entry's tags, no info) appended and published as livegate_map_remove's, in
-- the map's settings as of its last write. A map whose position expired (meta_ttl) goes
-- without announcements. Returns {removed, more}: more is 1 when the limit stopped it early.
local function map_expire(keys, args)
  local prefix = args[1]
  local budget = math.max(1, tonumber(args[2]) or 1000)
  local expiring = keys[1]
  local ms = now_ms()
  local removed = 0
  local due = redis.call('ZRANGEBYSCORE', expiring, '-inf', ms, 'LIMIT', 0, budget)
  for _, channel in ipairs(due) do
    if removed >= budget then break end
    local k = map_keys(prefix, channel)
    local meta = redis.call('HMGET', k.meta, 'e', 'm', 'mt')
    if not meta[1] then
      redis.call('DEL', k.map, k.keys, k.exp)
      redis.call('ZREM', expiring, channel)
    else
      local s = {size = tonumber(meta[2]) or 0, ttl_ms = tonumber(meta[3]) or 0, key_ttl_ms = 0}
      local names = redis.call('ZRANGEBYSCORE', k.exp, '-inf', ms, 'LIMIT', 0, budget - removed)
      for _, key in ipairs(names) do
        local envelope = redis.call('HGET', k.map, key)
        if envelope then
          local _, tags_json = entry_fields(envelope)
          map_write(k, s, prefix, channel, meta[1], key, '', '', tags_json, true, ms)
          removed = removed + 1
        else
          redis.call('ZREM', k.exp, key)
          redis.call('ZREM', k.keys, key)
        end
      end
      local earliest = redis.call('ZRANGE', k.exp, 0, 0, 'WITHSCORES')
      if #earliest > 0 then
        redis.call('ZADD', expiring, earliest[2], channel)
      else
        redis.call('ZREM', expiring, channel)
      end
    end
  end
  local more = 0
  if removed >= budget or #due >= budget then more = 1 end
  return {removed, more}
end

local function version()
  return VERSION
end

redis.register_function('livegate_publish', publish)
redis.register_function('livegate_publish_batch', publish_batch)
redis.register_function('livegate_history', history)
redis.register_function('livegate_presence_add', presence_add)
redis.register_function('livegate_presence_remove', presence_remove)
redis.register_function('livegate_presence', presence_get)
redis.register_function('livegate_user_connect', user_connect)
redis.register_function('livegate_user_refresh', user_refresh)
redis.register_function('livegate_user_disconnect', user_disconnect)
redis.register_function('livegate_user_connections', user_connections)
redis.register_function('livegate_map_publish', map_publish)
redis.register_function('livegate_map_remove', map_remove)
redis.register_function('livegate_map_state', map_state)
redis.register_function('livegate_map_stats', map_stats)
redis.register_function('livegate_map_clear', map_clear)
redis.register_function('livegate_map_expire', map_expire)
redis.register_function{function_name = 'livegate_version', callback = version, flags = {'no-writes'}}
