"""The Lua of ``bench/fleet_proto_redis.py``'s "wait in the broker".

Both scripts take a batch only when one is worth taking, atomically, so
that two workers never split one batch between them:

* some key's queue holds ``batch_size`` undelivered messages, or
* its oldest undelivered message was sent ``batch_timeout - slack`` ago
  (a stream entry's id is its send time in ms; a forwarded entry carries
  the original send time in field ``t``; a list element starts with it).

KEYS[1] is a sorted set of the keys that may hold messages (the producer
adds a key with ``ZADD NX`` in the MULTI of its sends; the script removes
it once its queue is empty), KEYS[2] the wake stream idle workers block on.
ARGV: group, consumer, batch_size, batch_timeout ms, slack ms, the queue
names' prefix (queue of key ``k`` is ``prefix .. k``), how many keys to
look at per call.

Reply: ``{1, key, messages}`` for a batch; else ``{0, ms until the next
deadline or -1 when nothing waits, the wake stream's last id}``.
"""

_COMMON = """
local zset, wake = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local size, timeout, slack = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local prefix, scan = ARGV[6], tonumber(ARGV[7])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local nearest = -1
local function idle()
  local last = redis.call('XREVRANGE', wake, '+', '-', 'COUNT', 1)
  local id = '0-0'
  if #last > 0 then id = last[1][1] end
  return {0, nearest, id}
end
local function consider(due)
  local wait = due - now
  if nearest < 0 or wait < nearest then nearest = wait end
end
"""

STREAM_TAKE = (
    _COMMON
    + """
local function group_of(stream)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if ok then
    for _, g in ipairs(groups) do
      local h = {}
      for i = 1, #g, 2 do h[g[i]] = g[i + 1] end
      if h['name'] == group then return h end
    end
  end
  -- a lost group (or a new key) starts at 0: nothing sent is skipped
  redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  return {['last-delivered-id'] = '0-0', ['lag'] = false}
end
for _, key in ipairs(redis.call('ZRANGE', zset, 0, scan - 1)) do
  local stream = prefix .. key
  local g = group_of(stream)
  local first = redis.call(
    'XRANGE', stream, '(' .. g['last-delivered-id'], '+', 'COUNT', 1)
  if #first == 0 then
    redis.call('ZREM', zset, key)
  else
    local sent = tonumber(string.match(first[1][1], '^(%d+)'))
    local fields = first[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 't' then sent = tonumber(fields[i + 1]) end
    end
    local due = sent + timeout - slack
    local full
    if g['lag'] then full = g['lag'] >= size
    else  -- lag unknown (entries deleted): count up to size
      full = #redis.call('XRANGE', stream, '(' .. g['last-delivered-id'], '+',
        'COUNT', size) >= size
    end
    if full or due <= now then
      local got = redis.call(
        'XREADGROUP', 'GROUP', group, consumer, 'COUNT', size,
        'STREAMS', stream, '>')
      return {1, key, got[1][2]}
    end
    consider(due)
  end
end
return idle()
"""
)

LIST_TAKE = (
    _COMMON
    + """
for _, key in ipairs(redis.call('ZRANGE', zset, 0, scan - 1)) do
  local list = prefix .. key
  local waiting = redis.call('LLEN', list)
  if waiting == 0 then
    redis.call('ZREM', zset, key)
  else
    local oldest = redis.call('LINDEX', list, -1)
    local due = tonumber(string.match(oldest, '^(%d+)')) + timeout - slack
    if waiting >= size or due <= now then
      return {1, key, redis.call('RPOP', list, size)}
    end
    consider(due)
  end
end
return idle()
"""
)
