import Foundation
import NIOCore
import RedisClient

/// One user's keys. All carry the hash tag `{u:<id>}`, so Redis Cluster keeps a user in one slot
/// and the commit script may touch them together.
///
/// | key | type | content |
/// |---|---|---|
/// | `pb:{u:ID}` | hash | `version`, `epoch`, `state` (the `Playback` as JSON), `seen` (`<epoch>|<ms>`: when the holder was last known connected) |
/// | `lock:{u:ID}` | string, PX TTL | `<device>|<epoch>`: the lease, renewed by the node holding the device |
/// | `dev:{u:ID}` | hash | device id → JSON `{name, kind, last_seen, session, node}` |
/// | `online:{u:ID}` | sorted set | device id, scored by when its presence expires (ms) |
/// | `req:{u:ID}:<request id>` | string, PX 10 min | the first final answer to that request |
/// | `reqs:{u:ID}` | sorted set | the user's `req:` keys, scored by when they leave the window (Redis time, ms): at most `idempotencyCapacity` |
/// | `rest:{u:ID}` | hash, PX | the user's REST token bucket (`tokens`, `at`), shared by every node |
/// | channel `ev:{u:ID}` | pub/sub | committed changes, device lists, replacements |
/// | `lease-deadlines` | sorted set | user id, scored by when its lease lapses (Redis time, ms): every node sweeps it |
/// | `lease-deadlines:{ld:N}` | sorted set | on a Redis Cluster, the same in 16 buckets (N = the user's slot mod 16), spread over the masters |
/// | `node:<id>` | string, PX TTL | present while the node is alive (refreshed by its upkeep) |
struct RedisKeys {
    static func node(_ id: String) -> String { "node:\(id)" }

    /// The one key shared by all users: when each lease lapses, for the sweep.
    static let leaseDeadlines = "lease-deadlines"

    /// On a Redis Cluster the deadlines are kept in this many buckets, each in a slot of its own,
    /// so that no one master takes every renewal.
    static let deadlineBuckets = 16

    static func leaseDeadlines(bucket: Int) -> String { "lease-deadlines:{ld:\(bucket)}" }

    /// The bucket of `user`'s deadline on a cluster.
    var deadlineBucket: String { Self.leaseDeadlines(bucket: HashSlot.of(tag) % Self.deadlineBuckets) }

    let user: String

    var tag: String { "{u:\(user)}" }
    var playback: String { "pb:\(tag)" }
    var lock: String { "lock:\(tag)" }
    var devices: String { "dev:\(tag)" }
    var online: String { "online:\(tag)" }
    var channel: String { "ev:\(tag)" }

    func request(_ id: String) -> String { "req:\(tag):\(id)" }
    /// The user's remembered request ids (their `req:` keys), scored by when they leave the window.
    var requests: String { "reqs:\(tag)" }
    /// The user's REST token bucket, shared by every node.
    var requestBucket: String { "rest:\(tag)" }

    /// The user of an `ev:{u:ID}` channel.
    static func user(ofChannel channel: String) -> String? {
        guard channel.hasPrefix("ev:{u:"), channel.hasSuffix("}") else { return nil }
        return String(channel.dropFirst(6).dropLast())
    }
}

/// The Lua scripts of the Redis engine.
enum RedisScripts {
    /// A script as it runs on a Redis Cluster: publishing to the user's shard channel, whose
    /// subscribers are at the master of the user's slot (`PUBLISH` would reach every node).
    static func sharded(_ source: String) -> String {
        source.replacingOccurrences(of: "redis.call('PUBLISH',", with: "redis.call('SPUBLISH',")
    }

    /// Lua for the scripts that move a lease's deadline in `lease-deadlines`: Redis's clock in ms
    /// (one clock for every node's sweep), and a user's deadline `ms` from now. The deadlines key
    /// comes last in KEYS and is left out on a Redis Cluster, where it lives in another slot than
    /// the user's keys: there `RedisStorage` moves the deadline itself, before the script.
    private static let deadlines = """
        local function now_ms() local t = redis.call('TIME'); return t[1] * 1000 + math.floor(t[2] / 1000) end
        local function lapse_in(key, ms, user) if key then redis.call('ZADD', key, now_ms() + tonumber(ms), user) end end

        """

    /// The one call of a command: answers a remembered request id; checks that the state is still
    /// at the expected version (else returns the current state, so the retry needs no read); then
    /// either commits (writes the state, moves or clears the lease, remembers the answer, publishes
    /// the change with the stored state appended to the frame) or, for a command that changed
    /// nothing, confirms the version and remembers the answer.
    /// A user remembers at most a capacity of request ids inside the window (`reqs:{u:ID}` lists
    /// them by when they leave it): a new id beyond that is refused, never an old one forgotten early.
    /// KEYS: pb, lock, req, reqs, lease deadlines (left out on a cluster). ARGV: expected version, remember (0, or the
    /// capacity of remembered ids), answer JSON, answer TTL ms, mode (commit|confirm); for commit
    /// also: new version, new epoch, state JSON, lease op (keep|set|del), lock value, lock TTL ms,
    /// channel, frame head, user.
    /// Returns {1, version} when committed or confirmed, {0, current version, current state or nil}
    /// on a conflict, {2, answer} for a known request, {3, ms until an id leaves the window} when
    /// the user has as many ids remembered as it may.
    static let command = deadlines + """
        local remember = ARGV[2] ~= '0'
        if remember then
          local known = redis.call('GET', KEYS[3])
          if known then return {2, known} end
          local now = now_ms()
          redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
          if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[2]) then
            local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
            return {3, math.max(1, tonumber(oldest[2]) - now)}
          end
        end
        local current = redis.call('HMGET', KEYS[1], 'version', 'state')
        local version = tonumber(current[1] or '0')
        if version ~= tonumber(ARGV[1]) then return {0, version, current[2]} end
        if ARGV[5] ~= 'commit' then
          if remember then
            redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[4])
            lapse_in(KEYS[4], ARGV[4], KEYS[3])
          end
          return {1, version}
        end
        redis.call('HSET', KEYS[1], 'version', ARGV[6], 'epoch', ARGV[7], 'state', ARGV[8])
        if ARGV[9] == 'set' then
          redis.call('SET', KEYS[2], ARGV[10], 'PX', ARGV[11])
          lapse_in(KEYS[5], ARGV[11], ARGV[14])
        elseif ARGV[9] == 'del' then
          redis.call('DEL', KEYS[2])
          if KEYS[5] then redis.call('ZREM', KEYS[5], ARGV[14]) end
        end
        if remember then
          redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
          lapse_in(KEYS[4], ARGV[4], KEYS[3])
        end
        redis.call('PUBLISH', ARGV[12], ARGV[13] .. ARGV[8])
        return {1, tonumber(ARGV[6])}
        """

    /// Puts a restored playback back into an empty slot (Redis lost it), or over the version in
    /// ARGV[9] (Redis went back in time: a failover lost acknowledged writes), and announces it;
    /// does nothing if some node restored or committed meanwhile.
    /// KEYS: pb, lock, lease deadlines. ARGV: version, epoch, state JSON, lock value ('' for
    /// none), lock TTL ms, channel, message JSON ('' for none), user, replaced version ('' for
    /// none). Returns 1 when restored, 0 when the slot was taken.
    static let restore = deadlines + """
        if ARGV[9] == '' then
          if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        elseif tonumber(redis.call('HGET', KEYS[1], 'version') or '-1') ~= tonumber(ARGV[9]) then
          return 0
        end
        redis.call('HSET', KEYS[1], 'version', ARGV[1], 'epoch', ARGV[2], 'state', ARGV[3])
        if ARGV[4] ~= '' then
          redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
          lapse_in(KEYS[3], ARGV[5], ARGV[8])
        elseif ARGV[9] ~= '' then
          redis.call('DEL', KEYS[2])
        end
        if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
        return 1
        """

    /// Sets the lease's TTL if it still names this holder, records when the holder was seen, and
    /// moves its deadline. KEYS: lock, pb, lease deadlines. ARGV: value, TTL ms, epoch, seen ms,
    /// user. Returns 1 when renewed, 0 when the lease names somebody else or nobody.
    static let renew = deadlines + """
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'seen', ARGV[3] .. '|' .. ARGV[4]) end
        lapse_in(KEYS[3], ARGV[2], ARGV[5])
        return 1
        """

    /// Takes the lease for a holder whose device connected (again): a compare-and-set, so that a
    /// late reconnect never overwrites a newer holder's lock. Only while the stored playback is at
    /// the holder's epoch (every move of the lease raises it) and the lock is free, already this
    /// holder's, or of an older epoch. KEYS: pb, lock, lease deadlines. ARGV: value, epoch, TTL ms,
    /// seen ms, user. Returns 1 when taken, 0 when refused.
    static let take = deadlines + """
        local epoch = redis.call('HGET', KEYS[1], 'epoch')
        if not epoch or tonumber(epoch) ~= tonumber(ARGV[2]) then return 0 end
        local current = redis.call('GET', KEYS[2])
        if current and current ~= ARGV[1] then
          local held = tonumber(string.match(current, '|(%-?%d+)$') or '')
          if held == nil or held >= tonumber(ARGV[2]) then return 0 end
        end
        redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
        redis.call('HSET', KEYS[1], 'seen', ARGV[2] .. '|' .. ARGV[4])
        lapse_in(KEYS[3], ARGV[3], ARGV[5])
        return 1
        """

    /// Whether the lease is held, and when its holder was last seen. KEYS: lock, pb.
    /// Returns {1 when held else 0, seen ('<epoch>|<ms>') or false}.
    static let lapse = """
        return {redis.call('EXISTS', KEYS[1]), redis.call('HGET', KEYS[2], 'seen')}
        """

    /// Claims up to ARGV[2] users whose lease deadline passed more than ARGV[3] ms ago, for ARGV[1]
    /// ms (their score moves past the claim, so other nodes skip them meanwhile). KEYS: lease deadlines.
    static let sweep = deadlines + """
        local now = now_ms()
        local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]), 'LIMIT', 0, tonumber(ARGV[2]))
        for _, user in ipairs(due) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), user) end
        return due
        """

    /// Sweeps the user again in ARGV[1] ms. KEYS: lease deadlines. ARGV: ms, user.
    static let deferSweep = deadlines + """
        lapse_in(KEYS[1], ARGV[1], ARGV[2])
        return 1
        """

    /// After a sweep: the user's deadline follows the lock if it is held again, else it is removed.
    /// KEYS: lock, lease deadlines. ARGV: user. (On a cluster `RedisStorage` does this in two steps.)
    static let settle = deadlines + """
        local ttl = redis.call('PTTL', KEYS[1])
        if ttl > 0 then
          lapse_in(KEYS[2], ttl, ARGV[1])
        else
          redis.call('ZREM', KEYS[2], ARGV[1])
        end
        return 1
        """

    /// A device connected: its directory entry and presence, and the frame that tells the other
    /// nodes (the replacement notice and the new device list). Past `cap` entries, the offline
    /// devices seen longest ago are removed until `cap` remain (online ones never are).
    /// KEYS: dev, online. ARGV: device, entry JSON, presence expiry ms, channel, frame, now ms, cap.
    /// Returns 1 when joined, 0 when `cap` other devices are online.
    static let join = """
        local present = redis.call('ZSCORE', KEYS[2], ARGV[1])
        if not (present and tonumber(present) > tonumber(ARGV[6])) then
          if redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[6], '+inf') >= tonumber(ARGV[7]) then return 0 end
        end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
        local excess = redis.call('HLEN', KEYS[1]) - tonumber(ARGV[7])
        if excess > 0 then
          local all = redis.call('HGETALL', KEYS[1])
          local offline = {}
          for i = 1, #all, 2 do
            local until_ms = redis.call('ZSCORE', KEYS[2], all[i])
            if not until_ms or tonumber(until_ms) <= tonumber(ARGV[6]) then
              local ok, entry = pcall(cjson.decode, all[i + 1])
              table.insert(offline, {all[i], ok and tonumber(entry.last_seen) or 0})
            end
          end
          table.sort(offline, function(a, b) return a[2] < b[2] end)
          for i = 1, math.min(excess, #offline) do
            redis.call('HDEL', KEYS[1], offline[i][1])
            redis.call('ZREM', KEYS[2], offline[i][1])
          end
        end
        redis.call('PUBLISH', ARGV[4], ARGV[5])
        return 1
        """

    /// One of the user's REST requests from a token bucket shared by every node.
    /// KEYS: bucket. ARGV: rate per second, burst. Returns 0 when taken, else the ms until a token is.
    static let requestToken = deadlines + """
        local now = now_ms()
        local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
        local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
        local tokens = tonumber(bucket[1]) or burst
        local at = tonumber(bucket[2]) or now
        if now > at then tokens = math.min(burst, tokens + (now - at) * rate / 1000) end
        local wait = 0
        if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
        redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
        redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
        return wait
        """

    /// A device's connection ended: if the directory still names this session, the device goes
    /// offline and the new device list is published. Returns 1 when it did, 0 when a newer
    /// connection of the device (on any node) owns the entry.
    /// KEYS: dev, online. ARGV: device, session, offline entry JSON, channel, frame.
    static let leave = """
        local entry = redis.call('HGET', KEYS[1], ARGV[1])
        if not entry then return 0 end
        local ok, decoded = pcall(cjson.decode, entry)
        if not ok or decoded.session ~= ARGV[2] then return 0 end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
        redis.call('ZREM', KEYS[2], ARGV[1])
        redis.call('PUBLISH', ARGV[4], ARGV[5])
        return 1
        """

    /// Rewrites directory entries that still name a session (a device's connection here), so that
    /// a connection that replaced it meanwhile (on any node) keeps its entry.
    /// KEYS: dev. ARGV: device, session, entry JSON, repeated. Returns how many it wrote.
    static let rewrite = """
        local written = 0
        for i = 1, #ARGV, 3 do
            local entry = redis.call('HGET', KEYS[1], ARGV[i])
            if entry then
                local ok, decoded = pcall(cjson.decode, entry)
                if ok and decoded.session == ARGV[i + 1] then
                    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
                    written = written + 1
                end
            end
        end
        return written
        """

    /// Refreshes the presence of this node's devices of a user and says who is online. Only a
    /// device whose entry still names the session is extended: one that left meanwhile (`leave`
    /// ran between the node's look at its connections and this script) stays offline.
    /// KEYS: online, dev. ARGV: now ms, expiry ms, then device, session, repeated.
    /// Returns {devices without an entry (Redis lost them), [online devices]}.
    static let presence = """
        local missing = 0
        for i = 3, #ARGV, 2 do
            local entry = redis.call('HGET', KEYS[2], ARGV[i])
            if not entry then
                missing = missing + 1
            else
                local ok, decoded = pcall(cjson.decode, entry)
                if ok and decoded.session == ARGV[i + 1] then redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i]) end
            end
        end
        return {missing, redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')}
        """
}

/// A device's directory entry as stored (in Redis: `dev:{u:ID}`).
public struct StoredDevice: Codable, Sendable {
    var name: String
    var kind: DeviceKind
    var lastSeen: Int64
    var session: String?
    var node: String?
    var capabilities: [String]?
    /// The connection's round trip as last written (ms), while connected.
    var rttMs: Int?

    enum CodingKeys: String, CodingKey {
        case name, kind, session, node, capabilities
        case lastSeen = "last_seen"
        case rttMs = "rtt_ms"
    }
}
