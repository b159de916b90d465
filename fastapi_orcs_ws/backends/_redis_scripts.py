"""The Redis backend's Lua scripts: every change of shared state is one atomic script call.

Each script gets the key prefix as ``ARGV[1]``; lists travel as JSON arrays. Work that grows
with the data (a client's rooms, a dead node's clients) is done at most ``budget`` items per
call: the caller loops, so no call blocks Redis for more than a few milliseconds.

A client that vanished (its node died or left without closing it) goes through three states:
``vanished`` (waiting in ``vanished:{route}`` for a node that serves its route), ``claimed``
(a node runs its disconnect logic; its membership is still in place) and removed (the
claimer's ``finish``). A client whose disconnect logic had already started (``closing``, or
claimed by a node that died) is claimed only to be removed: that logic never runs twice.
"""

from __future__ import annotations

__all__ = ["LIB", "SCRIPTS"]

LIB = """
local P = ARGV[1]
-- The authenticated user of a client, from its info JSON ({"user_id": ...}), or nil.
local function user_of(info)
  if info and info ~= '' then
    local ok, decoded = pcall(cjson.decode, info)
    if ok and type(decoded) == 'table' and type(decoded.user_id) == 'string' then
      return decoded.user_id
    end
  end
  return nil
end
local function leave(cid, room, owner)
  if redis.call('SREM', P..'members:'..room, cid) == 0 then return 0 end
  redis.call('SREM', P..'client-rooms:'..cid, room)
  if redis.call('HINCRBY', P..'room-nodes:'..room, owner, -1) <= 0 then
    redis.call('HDEL', P..'room-nodes:'..room, owner)
  end
  redis.call('DECR', P..'memberships')
  if redis.call('SCARD', P..'members:'..room) == 0 then
    redis.call('SREM', P..'rooms', room)
    redis.call('DEL', P..'room-nodes:'..room)
  end
  return 1
end
local function join(cid, room, owner)
  if redis.call('SADD', P..'members:'..room, cid) == 0 then return 0 end
  redis.call('SADD', P..'client-rooms:'..cid, room)
  redis.call('HINCRBY', P..'room-nodes:'..room, owner, 1)
  redis.call('INCR', P..'memberships')
  redis.call('SADD', P..'rooms', room)
  return 1
end
local function unclaim(cid)
  redis.call('HDEL', P..'vanished', cid)
  local claimer = redis.call('HGET', P..'claimed', cid)
  if claimer then
    redis.call('HDEL', P..'claimed', cid)
    redis.call('SREM', P..'claims:'..claimer, cid)
  end
end
local function add(cid, node, info)
  redis.call('HSET', P..'owner', cid, node)
  redis.call('SADD', P..'node-clients:'..node, cid)
  if info and info ~= '' then
    redis.call('HSET', P..'client-info', cid, info)
    local uid = user_of(info)
    if uid then redis.call('SADD', P..'user-clients:'..uid, cid) end
  end
  -- held by a live node again (it was cut off, not dead): nobody else cleans it up
  unclaim(cid)
end
-- Leave up to `budget` rooms; once none is left, forget the client. -> rooms possibly left
local function remove_some(cid, budget)
  local owner = redis.call('HGET', P..'owner', cid)
  if owner then
    local rooms = redis.call('SPOP', P..'client-rooms:'..cid, budget)
    for _, room in ipairs(rooms) do leave(cid, room, owner) end
    if #rooms >= budget and redis.call('EXISTS', P..'client-rooms:'..cid) == 1 then
      return 1
    end
    redis.call('HDEL', P..'owner', cid)
    redis.call('SREM', P..'node-clients:'..owner, cid)
  end
  redis.call('DEL', P..'client-rooms:'..cid)
  local uid = user_of(redis.call('HGET', P..'client-info', cid))
  if uid then redis.call('SREM', P..'user-clients:'..uid, cid) end
  redis.call('HDEL', P..'client-info', cid)
  redis.call('SREM', P..'closing', cid)
  unclaim(cid)
  return 0
end
local function route_of(cid)
  local info = redis.call('HGET', P..'client-info', cid)
  if info and info ~= '' then
    local ok, decoded = pcall(cjson.decode, info)
    if ok and type(decoded) == 'table' and type(decoded.route) == 'string' then
      return decoded.route
    end
  end
  return ''
end
-- Queue a client of a dead or departed node for a node that serves its route.
local function vanish(cid, closing)
  unclaim(cid)
  if closing then redis.call('SADD', P..'closing', cid) end
  local route = route_of(cid)
  redis.call('HSET', P..'vanished', cid, route)
  redis.call('SADD', P..'vanished:'..route, cid)
  redis.call('SADD', P..'vanished-routes', route)
end
-- Hand up to `budget` of a node's clients and claims over. -> moved, done
local function hand_over(node, budget)
  local moved = 0
  if budget > 0 then
    -- claimed by that node: their disconnect logic started there, it never runs again
    for _, cid in ipairs(redis.call('SPOP', P..'claims:'..node, budget)) do
      redis.call('HDEL', P..'claimed', cid)
      vanish(cid, true)
      moved = moved + 1
    end
  end
  if budget - moved > 0 then
    for _, cid in ipairs(redis.call('SPOP', P..'node-clients:'..node, budget - moved)) do
      if redis.call('HGET', P..'owner', cid) == node then
        vanish(cid, redis.call('SISMEMBER', P..'closing', cid) == 1)
      end
      moved = moved + 1
    end
  end
  local left = redis.call('SCARD', P..'node-clients:'..node)
    + redis.call('SCARD', P..'claims:'..node)
  return moved, left == 0
end
local function forget_node(node)
  redis.call('SREM', P..'nodes', node)
  redis.call('DEL', P..'node-routes:'..node, P..'node-clients:'..node, P..'claims:'..node)
end
local function listening(node)
  return redis.call('PUBSUB', 'NUMSUB', P..'node:'..node)[2] > 0
end
-- Room routing misses nodes: Redis lost its data and the nodes are writing their membership
-- back (resyncing), or it has not even heard from the sender since (Redis forgot the sender:
-- no node has beaten yet, so nothing says routing is incomplete but the sender's own absence).
local function routing_incomplete(self)
  return redis.call('EXISTS', P..'resyncing') == 1 or redis.call('SISMEMBER', P..'nodes', self) == 0
end
local function is_excluded(set, list)
  local n = 0
  for _, cid in ipairs(list) do
    if redis.call('SISMEMBER', set, cid) == 1 then n = n + 1 end
  end
  return n
end
-- Publish a room's message to the nodes holding its members (this one too with
-- include_self: a frame with a position reaches every node in Redis's order).
-- -> members addressed, recipients on nodes that were not listening
local function route_room(room, self, msg, excluded, peers_json, include_self)
  local key = P..'members:'..room
  local addressed = redis.call('SCARD', key) - is_excluded(key, excluded)
  local counts = {}
  local flat = redis.call('HGETALL', P..'room-nodes:'..room)
  for i = 1, #flat, 2 do counts[flat[i]] = tonumber(flat[i + 1]) end
  local lost = 0
  if routing_incomplete(self) then
    -- Redis lost its data moments ago and is being refilled: room routing is incomplete,
    -- so every node gets the frame and keeps it for its own members; a peer the sender knew
    -- before that is not listening counts as lost (its members in the room, or at least one)
    redis.call('PUBLISH', P..'all', msg)
    local peers = cjson.decode(peers_json)
    for _, node in ipairs(redis.call('SMEMBERS', P..'nodes')) do
      peers[node] = math.max(peers[node] or 0, redis.call('SCARD', P..'node-clients:'..node))
    end
    for node, held in pairs(peers) do
      if node ~= self and held > 0 and not listening(node) then
        lost = lost + (counts[node] or 1)
      end
    end
    return addressed, lost
  end
  for node, n in pairs(counts) do
    if (node ~= self or include_self) and redis.call('SISMEMBER', P..'nodes', node) == 1 then
      if redis.call('PUBLISH', P..'node:'..node, msg) == 0 then lost = lost + n end
    end
  end
  return addressed, lost
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A room's history: a stream of {o: offset, f: frame} and a hash {e: epoch, o: last offset}.
-- A room with no hash starts a new epoch (never seen, expired, or Redis lost its data).
local function history_epoch(room, candidate, meta_ttl)
  local meta = P..'hist-meta:'..room
  local epoch = redis.call('HGET', meta, 'e')
  if not epoch then
    epoch = candidate
    redis.call('HSET', meta, 'e', epoch, 'o', 0)
    redis.call('PEXPIRE', meta, meta_ttl)
    redis.call('DEL', P..'hist:'..room)
  end
  return epoch, tonumber(redis.call('HGET', meta, 'o'))
end
local function flatten(entries, out)
  for _, e in ipairs(entries) do
    table.insert(out, e[2][2])
    table.insert(out, e[2][4])
  end
  return out
end
"""

SCRIPTS = {
    # ARGV: P, node, cid, info (JSON)
    "add": "add(ARGV[3], ARGV[2], ARGV[4]) return 1",
    # ARGV: P, cid, budget -> 1 while rooms may be left (call again), 0 when removed
    "remove": "return remove_some(ARGV[2], tonumber(ARGV[3]))",
    # ARGV: P, cid, node -> 1 if marked (its disconnect logic runs on `node`)
    "closing": """
if redis.call('HGET', P..'owner', ARGV[2]) ~= ARGV[3] then return 0 end
return redis.call('SADD', P..'closing', ARGV[2])""",
    # ARGV: P, cid, room, self, register (0/1), command for the owner, most rooms (0: any)
    # -> false (no such client), 'full' (in that many rooms, not this one: nothing done)
    #    or {owner, receivers of the command (-1: self)}
    "join": """
if ARGV[5] == '1' then add(ARGV[2], ARGV[4]) end
local owner = redis.call('HGET', P..'owner', ARGV[2])
if not owner then return false end
local cap = tonumber(ARGV[7] or '0')
if cap > 0 and redis.call('SISMEMBER', P..'client-rooms:'..ARGV[2], ARGV[3]) == 0
    and redis.call('SCARD', P..'client-rooms:'..ARGV[2]) >= cap then
  return 'full'
end
join(ARGV[2], ARGV[3], owner)
if owner == ARGV[4] then return {owner, -1} end
return {owner, redis.call('PUBLISH', P..'node:'..owner, ARGV[6])}""",
    # ARGV: P, cid, room, self, command -> {1 if it was in the room, receivers (-1: self)}
    "leave": """
local owner = redis.call('HGET', P..'owner', ARGV[2])
if not owner then return {0, -1} end
local left = leave(ARGV[2], ARGV[3], owner)
if left == 0 or owner == ARGV[4] then return {left, -1} end
return {left, redis.call('PUBLISH', P..'node:'..owner, ARGV[5])}""",
    # ARGV: P, cid, node, JSON [rooms] -> how many it left
    "leave_rooms": """
local n = 0
for _, room in ipairs(cjson.decode(ARGV[4])) do n = n + leave(ARGV[2], room, ARGV[3]) end
return n""",
    # ARGV: P, room, self, message, JSON [excluded], JSON {node: clients} (peers known before)
    # -> {members addressed, recipients on nodes that were not listening}
    "publish_room": """
local addressed, lost = route_room(ARGV[2], ARGV[3], ARGV[4], cjson.decode(ARGV[5]), ARGV[6],
                                   false)
return {addressed, lost}""",
    # ARGV: P, room, self, message header, frame head, JSON [excluded], JSON {node: clients},
    #       size (0: no bound), ttl ms (0: none), meta ttl ms, epoch if the room has none
    # -> {members addressed, recipients lost, offset, epoch}
    "publish_history": """
local room = ARGV[2]
local epoch = history_epoch(room, ARGV[11], ARGV[10])
local meta, stream = P..'hist-meta:'..room, P..'hist:'..room
local offset = redis.call('HINCRBY', meta, 'o', 1)
local frame = ARGV[5]..offset..',"epoch":"'..epoch..'"}'
local size = tonumber(ARGV[8])
if size > 0 then
  redis.call('XADD', stream, 'MAXLEN', size, '*', 'o', offset, 'f', frame)
else
  redis.call('XADD', stream, '*', 'o', offset, 'f', frame)
end
local ttl = tonumber(ARGV[9])
if ttl > 0 then redis.call('XTRIM', stream, 'MINID', now_ms() - ttl) end
redis.call('PEXPIRE', meta, ARGV[10])
redis.call('PEXPIRE', stream, ARGV[10])
local addressed, lost = route_room(room, ARGV[3], ARGV[4]..'\\n'..frame,
                                   cjson.decode(ARGV[6]), ARGV[7], true)
return {addressed, lost, offset, epoch}""",
    # ARGV: P, room, since offset (-1: none), since epoch, epoch if the room has none,
    #       ttl ms (0: none), limit (-1: none), meta ttl ms
    # -> {epoch, last offset, 1 if complete, {offset, frame, ...} oldest first}
    "read_history": """
local room = ARGV[2]
local epoch, top = history_epoch(room, ARGV[5], ARGV[8])
local stream = P..'hist:'..room
local ttl, since, limit = tonumber(ARGV[6]), tonumber(ARGV[3]), tonumber(ARGV[7])
local oldest = '-'
if ttl > 0 then oldest = tostring(now_ms() - ttl) end
if limit == 0 then return {epoch, top, 1, {}} end
if since < 0 then
  if limit < 0 then
    return {epoch, top, 1, flatten(redis.call('XRANGE', stream, oldest, '+'), {})}
  end
  local got = redis.call('XREVRANGE', stream, '+', oldest, 'COUNT', limit)
  local ordered = {}
  for i = #got, 1, -1 do table.insert(ordered, got[i]) end
  return {epoch, top, 1, flatten(ordered, {})}
end
if ARGV[4] ~= epoch or since > top then return {epoch, top, 0, {}} end
local missed = top - since
if missed == 0 then return {epoch, top, 1, {}} end
local got = redis.call('XREVRANGE', stream, '+', oldest, 'COUNT', missed)
if #got < missed then return {epoch, top, 0, {}} end
local ordered = {}
for i = #got, 1, -1 do
  if limit >= 0 and #ordered >= limit then break end
  table.insert(ordered, got[i])
end
return {epoch, top, 1, flatten(ordered, {})}""",
    # ARGV: P, room -> {client, info, ...} of the room's members
    "presence": """
local out = {}
for _, cid in ipairs(redis.call('SMEMBERS', P..'members:'..ARGV[2])) do
  table.insert(out, cid)
  table.insert(out, redis.call('HGET', P..'client-info', cid) or '')
end
return out""",
    # ARGV: P, self, message, JSON [excluded], JSON {node: clients} (peers known before)
    # -> {clients addressed, recipients on nodes that were not listening}
    "publish_all": """
local self, msg = ARGV[2], ARGV[3]
redis.call('PUBLISH', P..'all', msg)
local excluded = cjson.decode(ARGV[4])
local n = redis.call('HLEN', P..'owner')
for _, cid in ipairs(excluded) do n = n - redis.call('HEXISTS', P..'owner', cid) end
local held = {}
for _, node in ipairs(redis.call('SMEMBERS', P..'nodes')) do
  held[node] = redis.call('SCARD', P..'node-clients:'..node)
end
if routing_incomplete(self) then
  for node, count in pairs(cjson.decode(ARGV[5])) do
    if held[node] == nil or held[node] < count then held[node] = count end
  end
end
local lost = 0
for node, count in pairs(held) do
  if node ~= self and count > 0 and not listening(node) then lost = lost + count end
end
return {n, lost}""",
    # ARGV: P, cid, self, message
    # ARGV: P, cid, self, message, JSON {node: clients} (peers known before)
    # -> {1 sent, 0 unknown or vanished client, -1 owned by self;
    #     1 if nobody listened, 2 if Redis lost its data (owner unknown): sent to every node,
    #     and a node the sender knew that may hold the client was not listening}
    "send": """
local owner = redis.call('HGET', P..'owner', ARGV[2])
if not owner then
  if not routing_incomplete(ARGV[3]) then return {0, 0} end
  -- Redis lost its data and the owner may not have written its clients back yet: every
  -- node gets it and delivers it if the client is its own
  redis.call('PUBLISH', P..'all', ARGV[4])
  for node, held in pairs(cjson.decode(ARGV[5])) do
    if node ~= ARGV[3] and held > 0 and not listening(node) then return {1, 2} end
  end
  return {1, 0}
end
if owner == ARGV[3] then return {-1, 0} end
if redis.call('HEXISTS', P..'vanished', ARGV[2]) == 1
    or redis.call('HEXISTS', P..'claimed', ARGV[2]) == 1
    or redis.call('SISMEMBER', P..'nodes', owner) == 0 then
  return {0, 0}
end
if redis.call('PUBLISH', P..'node:'..owner, ARGV[4]) == 0 then return {1, 1} end
return {1, 0}""",
    # ARGV: P, node, ttl ms, token:beat, JSON [routes], 1 if this node was registered before,
    #       token -> {1 if the node was not registered, 1 if another process beat with this id}
    "heartbeat": """
local alive = P..'alive:'..ARGV[2]
local before = redis.call('GET', alive)
redis.call('SET', alive, ARGV[4], 'PX', ARGV[3])
local added = redis.call('SADD', P..'nodes', ARGV[2])
local routes_key = P..'node-routes:'..ARGV[2]
redis.call('DEL', routes_key)
local routes = cjson.decode(ARGV[5])
if #routes > 0 then redis.call('SADD', routes_key, unpack(routes)) end
if added == 1 and ARGV[6] == '1' then
  -- Redis forgot a node that was registered (it restarted empty, or reaped the node
  -- while it was cut off): room routing misses nodes until they have all written back
  redis.call('SET', P..'resyncing', '1', 'PX', ARGV[3])
end
local foreign = 0
if before and string.sub(before, 1, #ARGV[7] + 1) ~= ARGV[7]..':' then foreign = 1 end
return {added, foreign}""",
    # ARGV: P, self, budget, JSON [routes this node serves]
    # -> {{node, clients handed over, 1 if fully reaped}...},
    #    {{client, info, 1 if its disconnect logic already started, 1 if orphaned}...},
    #    {node, clients it holds, ...} of the live peers, 1 if the budget ran out
    "reap": """
local self = ARGV[2]
local budget = tonumber(ARGV[3])
local mine = {}
for _, route in ipairs(cjson.decode(ARGV[4])) do mine[route] = true end
local dead = {}
local peers = {}
for _, node in ipairs(redis.call('SMEMBERS', P..'nodes')) do
  if node ~= self then
    if redis.call('EXISTS', P..'alive:'..node) == 1 then
      table.insert(peers, node)
      table.insert(peers, redis.call('SCARD', P..'node-clients:'..node))
    elseif budget > 0 then
      local moved, done = hand_over(node, budget)
      budget = budget - moved
      if done then forget_node(node) end
      table.insert(dead, {node, moved, done and 1 or 0})
    end
  end
end
local claimed = {}
local served = nil
for _, route in ipairs(redis.call('SMEMBERS', P..'vanished-routes')) do
  if budget <= 0 then break end
  local orphan = 0
  local take = mine[route] == true
  if not take then
    if served == nil then
      served = {}
      for _, node in ipairs(redis.call('SMEMBERS', P..'nodes')) do
        if redis.call('EXISTS', P..'alive:'..node) == 1 then
          for _, r in ipairs(redis.call('SMEMBERS', P..'node-routes:'..node)) do
            served[r] = true
          end
        end
      end
    end
    if not served[route] then take = true; orphan = 1 end
  end
  if take then
    for _, cid in ipairs(redis.call('SPOP', P..'vanished:'..route, budget)) do
      budget = budget - 1
      if redis.call('HDEL', P..'vanished', cid) == 1 then
        redis.call('HSET', P..'claimed', cid, self)
        redis.call('SADD', P..'claims:'..self, cid)
        table.insert(claimed, {cid, redis.call('HGET', P..'client-info', cid) or '',
                               redis.call('SISMEMBER', P..'closing', cid), orphan})
      end
    end
    if redis.call('SCARD', P..'vanished:'..route) == 0 then
      redis.call('SREM', P..'vanished-routes', route)
    end
  end
end
return {dead, claimed, peers, budget <= 0 and 1 or 0}""",
    # ARGV: P, self, cid, budget -> 1 while rooms may be left (call again), 0 when done
    "finish": """
if redis.call('HGET', P..'claimed', ARGV[3]) ~= ARGV[2] then return 0 end
return remove_some(ARGV[3], tonumber(ARGV[4]))""",
    # ARGV: P, node, JSON [[client, info, closing 0/1, [rooms], rooms in all or -1]...]
    # -> the clients of this chunk that Redis has in more rooms than the node
    "sync": """
local node = ARGV[2]
local extra = {}
for _, e in ipairs(cjson.decode(ARGV[3])) do
  local cid = e[1]
  local owner = redis.call('HGET', P..'owner', cid)
  if owner and owner ~= node then
    -- another node's entry for this id (ids are random: a leftover): its rooms go first
    for _, room in ipairs(redis.call('SMEMBERS', P..'client-rooms:'..cid)) do
      leave(cid, room, owner)
    end
    redis.call('SREM', P..'node-clients:'..owner, cid)
  end
  add(cid, node, e[2])
  if e[3] == 1 then redis.call('SADD', P..'closing', cid) end
  for _, room in ipairs(e[4]) do join(cid, room, node) end
  if e[5] >= 0 and redis.call('SCARD', P..'client-rooms:'..cid) > e[5] then
    table.insert(extra, cid)
  end
end
return extra""",
    # ARGV: P, node, JSON [clients] -> how many were handed over
    # Clients Redis has for this node that it does not hold: its previous run's.
    "hand_over_clients": """
local node = ARGV[2]
local n = 0
for _, cid in ipairs(cjson.decode(ARGV[3])) do
  if redis.call('SREM', P..'node-clients:'..node, cid) == 1
      and redis.call('HGET', P..'owner', cid) == node then
    vanish(cid, redis.call('SISMEMBER', P..'closing', cid) == 1)
    n = n + 1
  end
end
return n""",
    # ARGV: P, node, JSON [clients] -> how many were handed over (closing: never run again)
    "hand_over_claims": """
local node = ARGV[2]
local n = 0
for _, cid in ipairs(cjson.decode(ARGV[3])) do
  if redis.call('SREM', P..'claims:'..node, cid) == 1 then
    redis.call('HDEL', P..'claimed', cid)
    vanish(cid, true)
    n = n + 1
  end
end
return n""",
    # ARGV: P, node, budget -> {1 once the node is gone, clients handed over}
    "drop": """
local moved, done = hand_over(ARGV[2], tonumber(ARGV[3]))
if done then
  forget_node(ARGV[2])
  redis.call('DEL', P..'alive:'..ARGV[2])
  return {1, moved}
end
return {0, moved}""",
    # ARGV: P
    "stats": """
return {redis.call('HLEN', P..'owner'), redis.call('SCARD', P..'rooms'),
        tonumber(redis.call('GET', P..'memberships') or '0')}""",
}
