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
-- Envelopes are msgpack arrays (see livegate/channels/redis/envelope.py):
--   version 1: {"p", offset, epoch, data, info_json, tags_json, time_ms}
--   version 2: {2, "p", offset, epoch, data, info_json, tags_json, time_ms}
-- Publishes write the version livegate asks for (option "envelope", negotiated between the
-- live instances), else the "envelope" field of <prefix>.config, else 1. History reads return
-- entries in the newest version the caller says it reads (1 when it says nothing).

local VERSION = 22

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
      redis.call('DEL', hist_key)
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
    redis.call('DEL', hist_key)
  end
  local meta = redis.call('HMGET', meta_key, 's', 'n', 't')
  local top, size, ttl_ms = tonumber(meta[1] or '0'), tonumber(meta[2] or '0'), tonumber(meta[3] or '0')
  local keep = meta_ttl
  if top == 0 and unpublished_ttl > 0 then keep = unpublished_ttl end
  if keep > 0 then
    if top > 0 then
      -- Published: only ever extended here (GT), so publishes can count on their expiry.
      redis.call('PEXPIRE', meta_key, math.floor(keep * 1000), 'GT')
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
redis.register_function{function_name = 'livegate_version', callback = version, flags = {'no-writes'}}
