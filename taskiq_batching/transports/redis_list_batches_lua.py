"""The Lua of ``redis_list_batches``: take whole batches from lists, and put.

A key's list holds ``"<ms>|<message>"`` elements, the newest on the
left: a send pushes left (``LPUSH``), a take pops the oldest from the
right (``RPOP list B``), a give back pushes right (the head end). ``ms``
is when Redis put it there (a send's, or a forward's: the main list
keeps no send time), so the deadline counts by Redis's own clock.

``LIST_TAKE`` is ``TAKE_HEAD`` + its ``visit`` + ``TAKE_TAIL``
(``redis_batches_lua``, the same arguments and reply as the stream's;
the group, consumer and claim are unused). Per key: ``LLEN`` ≥
``batch_size`` (or the key's need, ``size_of``), or the oldest
element's ms + ``batch_timeout`` - ``slack`` ≤ ``TIME`` → ``RPOP`` of
that many; else its deadline
counts towards the nearest one. An empty list leaves the set.
"""

from taskiq_batching.transports.redis_batches_lua import TAKE_HEAD, TAKE_TAIL

LIST_TAKE = (
    TAKE_HEAD
    + """
local function due_of(list)
  if timeout < 0 then return nil end
  local oldest = redis.call('LINDEX', list, -1)
  if not oldest then return nil end
  -- an element without a stamp (not put by the plugin) is due at once
  local sent = tonumber(string.match(oldest, '^(%d+)|')) or 0
  return sent + timeout - slack
end

local function after_take(key, list, left)
  if left <= 0 then
    forget(key)
    return
  end
  if left >= size then return consider(now) end
  local due = due_of(list)
  if due then consider(due) end
end

local function visit(key)
  local list = prefix .. key
  local waiting = redis.call('LLEN', list)
  if waiting == 0 then
    forget(key)
    return
  end
  local due, marked = due_of(list), marked_of(key)
  local want = size_of(key)
  local is_full = waiting >= want
  local is_marked = marked and marked <= now
  if is_full or is_marked or (due and due <= now) then
    local got = redis.call('RPOP', list, want)
    add(key, reason_of(key, is_full, is_marked), got)
    after_take(key, list, waiting - #got)
  elseif due or marked then
    consider(earliest(due, marked))
  end
end
"""
    + TAKE_TAIL
)

#: Put messages on their keys' lists, stamped with Redis's time
#: (``redis_batches_send.chunk_call``'s layout; the option is unused).
#: With a ttl, a chunk is put once per mark (``kiq_many``); with ttl 0
#: there is no mark (``kiq``, forwarding).
LIST_PUT = """
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  local mark = redis.call('GET', KEYS[1])
  if mark == 'void' then return redis.error_reply('VOIDED this chunk was given up') end
  if mark then return 0 end
end
-- nothing is written before every key is known to take its writes
for i = 2, #KEYS do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  local want = 'list'
  if i == 2 then want = 'zset' elseif i == 3 then want = 'stream' end
  if kind ~= 'none' and kind ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. kind)
  end
end
if ttl > 0 then redis.call('SET', KEYS[1], 'sent', 'EX', ttl) end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local stamp = now .. '|'
local n = tonumber(ARGV[2])
for j = 4 + n, #ARGV, 2 do
  redis.call('LPUSH', KEYS[3 + tonumber(ARGV[j])], stamp .. ARGV[j + 1])
end
for i = 1, n do redis.call('ZADD', KEYS[2], 'NX', now, ARGV[2 + i]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '1', '*', 'w', '1')
return (#ARGV - 3 - n) / 2
"""
