"""The Lua of ``redis_batches``: choose whole batches atomically, ack and delete.

``TAKE`` decides and reserves in one atomic step, so that two workers
never split a batch between them and nobody holds a forming batch. For
each key in the task's sorted set of keys (``KEYS[1]``, oldest first, at
most ``scan`` of them), on the key's stream:

* entries of a dead worker (pending, idle over ``claim_ms``) are taken
  first (``XAUTOCLAIM``), as one overdue batch, and returned;
* else a key reserved by another worker (below) is passed over;
* else the group's ``lag`` (``XINFO GROUPS``; counted with ``XRANGE``
  when Redis does not know it) and its oldest undelivered entry: its send
  time is its id's time, or its field ``t`` (a forwarded entry carries
  the time of the entry it copies); when ``batch_size`` entries wait, or
  that time + ``batch_timeout`` - ``slack`` has come by Redis's own clock
  (``TIME``), the batch is reserved for this consumer and the script
  replies how many entries to read;
* while other workers have batches of the key reserved and not read,
  only a full batch past theirs is reserved (their entries are not
  counted); anything else waits for their reads;
* else the key's deadline counts towards the nearest one.

The script does not read the batch: entries read inside Lua are
converted into Lua tables and back into the reply, which cost the server
~400 µs per 100 entries, three times the read itself. The caller reads
them with a plain ``XREADGROUP COUNT <n>`` (each reader of a key gets
the first ``n`` undelivered entries: whole batches, whoever reads first)
and drops its reservation (``HDEL``) in the same round trip. A
reservation is a field of the hash ``KEYS[4]``: ``<bytes of the
consumer>:<consumer><key>`` -> ``<until ms> <entries> <f: a full batch,
t: not>``. It runs out after ``HOLD_MS``, the longest a worker that died
between its take and its read delays the key.

A key whose stream holds nothing undelivered and nothing pending leaves
the set (and its empty stream is deleted). A stream without the group
(a new key, or a group lost with a restarted Redis) gets it at ``0``:
nothing sent after a loss is skipped. A key taken is moved to the back
of the set, so that every key gets its turn.

A sender of a message with a ``batch_deadline`` marks its key in a third
sorted set (``ZADD LT`` of the ms): a key whose mark (less ``slack``) has
come is taken at once, with reason ``deadline``, and the mark is spent.

KEYS: the keys' sorted set, the wake stream, the deadlines' sorted set,
the reservations' hash (a list's script has no use for it).
ARGV: group, consumer, batch_size, batch_timeout ms (-1: none), slack
ms, the key streams' prefix (key ``k``'s stream is ``prefix .. k``), keys
scanned per call, batches to take at most, claim idle ms (0: never claim), then pairs
(key, need): a key whose remainder this worker holds is full, and taken,
at ``need`` entries instead of ``batch_size`` (``size_of``).

Reply: ``{ms to the nearest deadline or -1, the wake stream's last id,
key, reason, what, key, reason, what, ...}``: ``what`` is the entries
taken (a claim; a list's script), or the number to read from a key
reserved.
"""

#: The start of every take script: its arguments, Redis's clock, the
#: nearest deadline (``consider``) and the batches found (``add``).
#: A take script puts its own ``visit(key)`` between this and ``TAKE_TAIL``.
TAKE_HEAD = """
local zset, wake, dueset = KEYS[1], KEYS[2], KEYS[3]
local group, consumer = ARGV[1], ARGV[2]
local size, timeout, slack = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local prefix, scan, room = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local claim_ms = tonumber(ARGV[9])
-- keys a worker holds a short remainder of (a taken batch some of whose
-- messages were rejected or filtered): each is full at what it lacks
local needs = {}
for i = 10, #ARGV - 1, 2 do needs[ARGV[i]] = tonumber(ARGV[i + 1]) end
local function size_of(key) return needs[key] or size end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local nearest = -1
local found = {}
local taken = 0

local function consider(due)
  local wait = math.max(due - now, 0)
  if nearest < 0 or wait < nearest then nearest = wait end
end

-- a key's earliest batch_deadline (ms, set by its senders), less the slack
local function marked_of(key)
  local d = redis.call('ZSCORE', dueset, key)
  if d then return tonumber(d) - slack end
  return nil
end

local function earliest(a, b)
  if a == nil or (b ~= nil and b < a) then return b end
  return a
end

local function forget(key)
  redis.call('ZREM', zset, key)
  redis.call('ZREM', dueset, key)
end

-- why a key is taken: full, a sender's deadline (the mark is spent), its timeout
local function reason_of(key, is_full, is_marked)
  if is_marked then redis.call('ZREM', dueset, key) end
  if is_full then return 'size' end
  if is_marked then return 'deadline' end
  return 'timeout'
end

local function add(key, reason, entries)
  found[#found + 1] = key
  found[#found + 1] = reason
  found[#found + 1] = entries
  taken = taken + 1
  redis.call('ZADD', zset, 'XX', now, key)
end

"""

#: The end of every take script: visit the oldest keys (at most ``scan``)
#: until ``room`` batches are taken; reply with the wait, the wake
#: stream's last id and the batches.
TAKE_TAIL = """
local keys = redis.call('ZRANGE', zset, 0, scan - 1)
for _, key in ipairs(keys) do
  if taken >= room then
    consider(now)  -- keys left unvisited may be due: look again soon
    break
  end
  visit(key)
end
if #keys == scan and redis.call('ZCARD', zset) > scan then
  consider(now + slack)  -- keys past the scan: their turn comes by rotation
end
local last = redis.call('XREVRANGE', wake, '+', '-', 'COUNT', 1)
local wake_id = '0-0'
if #last > 0 then wake_id = last[1][1] end
local reply = {nearest, wake_id}
for i = 1, #found do reply[#reply + 1] = found[i] end
return reply
"""

#: Milliseconds a key stays reserved for the worker whose take chose it
#: (``TAKE``), unless it reads and releases it before: the longest a
#: worker that died between its take and its read delays the key.
HOLD_MS = 2000

TAKE = (
    TAKE_HEAD
    + """
local taking = KEYS[4]

local function group_of(stream)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if not ok then return nil end
  for _, g in ipairs(groups) do
    local h = {}
    for i = 1, #g, 2 do h[g[i]] = g[i + 1] end
    if h['name'] == group then return h end
  end
  redis.call('XGROUP', 'CREATE', stream, group, '0')
  -- at 0, every entry the stream holds is undelivered
  return {['last-delivered-id'] = '0-0', ['pending'] = 0,
    ['lag'] = redis.call('XLEN', stream)}
end

local function sent_of(entry)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 't' then return tonumber(fields[i + 1]) end
  end
  return tonumber(string.match(entry[1], '^(%d+)'))
end

local function due_of(entry)
  if timeout < 0 then return nil end
  return sent_of(entry) + timeout - slack
end

local function claim(stream, g)
  if claim_ms <= 0 or tonumber(g['pending']) == 0 then return nil end
  local got = redis.call('XAUTOCLAIM', stream, group, consumer, claim_ms, '0-0',
    'COUNT', size)
  local entries = {}
  for _, entry in ipairs(got[2]) do
    if entry and entry[2] then entries[#entries + 1] = entry end
  end
  if #entries > 0 then return entries end
  return nil
end

local function full(stream, g, want)
  if g['lag'] then return tonumber(g['lag']) >= want end
  return #redis.call('XRANGE', stream, '(' .. g['last-delivered-id'], '+',
    'COUNT', want) >= want
end

-- what other workers reserved and have not read yet, per key: the entries
-- (``n``), and whether one of them reads what is there, not a full batch
-- (``whole``); a field is ``<bytes of the consumer>:<consumer><key>``, its
-- value ``<until ms> <entries> <f: full, t: not>``; one run out is dropped
local holds = nil
local function holds_of(key)
  if not holds then
    holds = {}
    local flat = redis.call('HGETALL', taking)
    for i = 1, #flat, 2 do
      local size_, rest = string.match(flat[i], '^(%d+):(.*)$')
      local until_ms, n, kind = string.match(flat[i + 1], '^(%d+) (%d+) (%a)$')
      if tonumber(until_ms) <= now then
        redis.call('HDEL', taking, flat[i])
      elseif string.sub(rest, 1, tonumber(size_)) ~= consumer then
        local k = string.sub(rest, tonumber(size_) + 1)
        local h = holds[k] or {n = 0, whole = false}
        h.n = h.n + tonumber(n)
        h.whole = h.whole or kind == 't'
        holds[k] = h
      end
    end
  end
  return holds[key]
end

-- the caller reads ``want`` entries itself (XREADGROUP): they are reserved
-- for it meanwhile, so that no one else counts them
local function reserve(key, reason, want, is_full)
  local field = #consumer .. ':' .. consumer .. key
  local kind = is_full and 'f' or 't'
  redis.call('HSET', taking, field, (now + HOLD_MS) .. ' ' .. want .. ' ' .. kind)
  add(key, reason, want)
  -- the caller takes again at once after a batch: whatever is left then
  -- gets its own deadline
  consider(now)
end

local function visit(key)
  local stream = prefix .. key
  local g = group_of(stream)
  if not g then
    forget(key)
    return
  end
  local claimed = claim(stream, g)
  if claimed then
    add(key, 'timeout', claimed)
    return
  end
  local first = redis.call('XRANGE', stream, '(' .. g['last-delivered-id'], '+',
    'COUNT', 1)
  if #first == 0 then
    if tonumber(g['pending']) == 0 then
      forget(key)
      if redis.call('XLEN', stream) == 0 then redis.call('DEL', stream) end
    end
    return
  end
  local due, marked = due_of(first[1]), marked_of(key)
  local want = size_of(key)
  -- another worker reads this key now: a full batch past what it reserved
  -- is taken; anything else waits for its read (what is left is then due)
  local held = holds_of(key)
  if held and (held.whole or not g['lag']) then return consider(now) end
  local is_full = full(stream, g, want + (held and held.n or 0))
  if held and not is_full then return consider(now) end
  local is_marked = marked and marked <= now
  if is_full or is_marked or (due and due <= now) then
    reserve(key, reason_of(key, is_full, is_marked), want, is_full)
  elseif due or marked then
    consider(earliest(due, marked))
  end
end

"""
    + TAKE_TAIL
).replace("HOLD_MS", str(HOLD_MS))

#: Ack entries of a key stream and delete them, the ids sent once. KEYS:
#: the stream; ARGV: the group, then the ids.
ACK_DELETE = """
local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
  if #ids == 1000 or i == #ARGV then
    redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
    redis.call('XDEL', KEYS[1], unpack(ids))
    ids = {}
  end
end
return #ARGV - 1
"""
