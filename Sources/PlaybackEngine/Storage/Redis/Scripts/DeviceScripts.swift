import NIOCore
import RedisClient

/// A device connected: its directory entry and presence, and the frame that tells the other nodes
/// (the replacement notice and the new device list). Past `cap` entries, the offline devices seen
/// longest ago are removed until `cap` remain (online ones never are).
/// Returns 1 when joined, 0 when `cap` other devices are online.
struct JoinScript: RedisScriptCall {
    static let lua = """
        local present = redis.call('ZSCORE', KEYS[2], ARGV[1])
        if not (present and tonumber(present) > tonumber(ARGV[6])) then
          if redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[6], '+inf') >= tonumber(ARGV[7]) then return 0 end
        end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
        -- Back from idle: the user's keys stay (IdleScript set them to expire).
        redis.call('PERSIST', KEYS[1])
        redis.call('PERSIST', KEYS[2])
        redis.call('PERSIST', KEYS[3])
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

    // KEYS
    var devices: String
    var online: String
    var playback: String
    // ARGV
    var device: String
    var entry: ByteBuffer
    var presenceUntil: Int64
    var channel: String
    var frame: ByteBuffer
    var now: Int64
    var cap: Int

    var keys: [String] { [devices, online, playback] }
    var arguments: [RedisArgument] {
        [.string(device), .bytes(entry), .integer(presenceUntil), .string(channel), .bytes(frame), .integer(now), .integer(Int64(cap))]
    }
}

/// A user nobody uses leaves Redis: when the stored playback is still at `version` (which
/// PostgreSQL holds by then), nobody holds the lease and no device's presence is live, the
/// playback, the device directory and the presence set expire after `ttlMs`. Anything that comes
/// back (a device joining, a command committing) makes them persist again; once gone, the next
/// access restores the playback from PostgreSQL above every epoch and version handed out.
/// Returns 1 when the keys were set to expire.
struct IdleScript: RedisScriptCall {
    static let lua = DeadlineLua.functions + """
        local version = redis.call('HGET', KEYS[1], 'version')
        if not version or tonumber(version) ~= tonumber(ARGV[1]) then return 0 end
        if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
        if redis.call('ZCOUNT', KEYS[3], '(' .. now_ms(), '+inf') > 0 then return 0 end
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        redis.call('PEXPIRE', KEYS[3], ARGV[2])
        redis.call('PEXPIRE', KEYS[4], ARGV[2])
        return 1
        """

    // KEYS
    var playback: String
    var lock: String
    var online: String
    var devices: String
    // ARGV
    var version: Int64
    var ttlMs: Int64

    init(user: String, version: Int64, ttlMs: Int64) {
        let keys = RedisKeys(user: user)
        playback = keys.playback
        lock = keys.lock
        online = keys.online
        devices = keys.devices
        self.version = version
        self.ttlMs = ttlMs
    }

    var keys: [String] { [playback, lock, online, devices] }
    var arguments: [RedisArgument] { [.integer(version), .integer(ttlMs)] }
}

/// A device's connection ended: if the directory still names this session, the device goes offline
/// and the new device list is published. Returns 1 when it did, 0 when a newer connection of the
/// device (on any node) owns the entry.
struct LeaveScript: RedisScriptCall {
    static let lua = """
        local entry = redis.call('HGET', KEYS[1], ARGV[1])
        if not entry then return 0 end
        local ok, decoded = pcall(cjson.decode, entry)
        if not ok or decoded.session ~= ARGV[2] then return 0 end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
        redis.call('ZREM', KEYS[2], ARGV[1])
        redis.call('PUBLISH', ARGV[4], ARGV[5])
        return 1
        """

    // KEYS
    var devices: String
    var online: String
    // ARGV
    var device: String
    var session: String
    /// The entry as it is once offline.
    var entry: ByteBuffer
    var channel: String
    var frame: ByteBuffer

    var keys: [String] { [devices, online] }
    var arguments: [RedisArgument] { [.string(device), .string(session), .bytes(entry), .string(channel), .bytes(frame)] }
}

/// Rewrites directory entries that still name a session (a device's connection here), so that a
/// connection that replaced it meanwhile (on any node) keeps its entry. Returns how many it wrote.
struct RewriteScript: RedisScriptCall {
    static let lua = """
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

    var devices: String
    var entries: [(device: String, session: String, entry: ByteBuffer)]

    var keys: [String] { [devices] }
    var arguments: [RedisArgument] { entries.flatMap { [RedisArgument.string($0.device), .string($0.session), .bytes($0.entry)] } }
}

/// Refreshes the presence of this node's devices of a user and says who is online. Only a device
/// whose entry still names the session is extended: one that left meanwhile (`leave` ran between
/// the node's look at its connections and this script) stays offline.
/// Returns {devices without an entry (Redis lost them), [online devices]}.
struct PresenceScript: RedisScriptCall {
    static let lua = """
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

    // KEYS
    var online: String
    var devices: String
    // ARGV
    var now: Int64
    var until: Int64
    var sessions: [(device: String, session: String)]

    var keys: [String] { [online, devices] }
    var arguments: [RedisArgument] { [.integer(now), .integer(until)] + sessions.flatMap { [RedisArgument.string($0.device), .string($0.session)] } }
}
