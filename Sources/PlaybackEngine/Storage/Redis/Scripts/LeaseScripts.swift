import RedisClient
import NIOCore

/// Sets the lease's TTL if it still names this holder, records when the holder was seen, and moves
/// its deadline. Returns 1 when renewed, 0 when the lease names somebody else or nobody.
struct RenewScript: RedisScriptCall {
    static let lua = DeadlineLua.functions + """
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'seen', ARGV[3] .. '|' .. ARGV[4]) end
        lapse_in(KEYS[3], ARGV[2], ARGV[5])
        return 1
        """

    // KEYS
    var lock: String
    var playback: String
    var deadlines: String?
    // ARGV
    var holder: String
    var ttlMs: Int64
    var epoch: Int64
    var seen: Int64
    var user: String

    var keys: [String] { [lock, playback] + (deadlines.map { [$0] } ?? []) }
    var arguments: [RedisArgument] { [.string(holder), .integer(ttlMs), .integer(epoch), .integer(seen), .string(user)] }
}

/// Takes the lease for a holder whose device connected (again): a compare-and-set, so that a late
/// reconnect never overwrites a newer holder's lock. Only while the stored playback is at the
/// holder's epoch (every move of the lease raises it) and the lock is free, already this holder's,
/// or of an older epoch. Returns 1 when taken, 0 when refused.
struct TakeScript: RedisScriptCall {
    static let lua = DeadlineLua.functions + """
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

    // KEYS
    var playback: String
    var lock: String
    var deadlines: String?
    // ARGV
    var holder: String
    var epoch: Int64
    var ttlMs: Int64
    var seen: Int64
    var user: String

    var keys: [String] { [playback, lock] + (deadlines.map { [$0] } ?? []) }
    var arguments: [RedisArgument] { [.string(holder), .integer(epoch), .integer(ttlMs), .integer(seen), .string(user)] }
}

/// Whether the lease is held, and when its holder was last seen.
/// Returns {1 when held else 0, seen ('<epoch>|<ms>') or false}.
struct LapseScript: RedisScriptCall {
    static let lua = """
        return {redis.call('EXISTS', KEYS[1]), redis.call('HGET', KEYS[2], 'seen')}
        """

    var lock: String
    var playback: String

    var keys: [String] { [lock, playback] }
    var arguments: [RedisArgument] { [] }
}

/// Claims up to `limit` users whose lease deadline passed more than `marginMs` ago, for `claimMs`
/// (their score moves past the claim, so other nodes skip them meanwhile).
struct SweepScript: RedisScriptCall {
    static let lua = DeadlineLua.functions + """
        local now = now_ms()
        local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]), 'LIMIT', 0, tonumber(ARGV[2]))
        for _, user in ipairs(due) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), user) end
        return due
        """

    var deadlines: String
    var claimMs: Int64
    var limit: Int
    var marginMs: Int64

    var keys: [String] { [deadlines] }
    var arguments: [RedisArgument] { [.integer(claimMs), .integer(Int64(max(1, limit))), .integer(marginMs)] }
}

/// The user's deadline `ms` from now (sweeps it again then; on a cluster, also how a lease's
/// deadline is moved before the script that takes or keeps it).
struct DeferSweepScript: RedisScriptCall {
    static let lua = DeadlineLua.functions + """
        lapse_in(KEYS[1], ARGV[1], ARGV[2])
        return 1
        """

    var deadlines: String
    var ms: Int64
    var user: String

    var keys: [String] { [deadlines] }
    var arguments: [RedisArgument] { [.integer(ms), .string(user)] }
}

/// After a sweep: the user's deadline follows the lock if it is held again, else it is removed.
/// (On a cluster `RedisStorage` does this in two steps: the lock and the bucket are in different slots.)
struct SettleScript: RedisScriptCall {
    static let lua = DeadlineLua.functions + """
        local ttl = redis.call('PTTL', KEYS[1])
        if ttl > 0 then
          lapse_in(KEYS[2], ttl, ARGV[1])
        else
          redis.call('ZREM', KEYS[2], ARGV[1])
        end
        return 1
        """

    var lock: String
    var deadlines: String
    var user: String

    var keys: [String] { [lock, deadlines] }
    var arguments: [RedisArgument] { [.string(user)] }
}

/// Puts a restored playback back into an empty slot (Redis lost it), or over the version
/// `replacing` (Redis went back in time: a failover lost acknowledged writes), and announces it;
/// does nothing if some node restored or committed meanwhile. Returns 1 when restored, 0 when the
/// slot was taken.
struct RestoreScript: RedisScriptCall {
    static let lua = DeadlineLua.functions + """
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

    // KEYS
    var playback: String
    var lock: String
    var deadlines: String?
    // ARGV
    var version: Int64
    var epoch: Int64
    var state: ByteBuffer
    /// The lock's value; nil: no lease.
    var holder: String?
    var ttlMs: Int64
    var channel: String
    var frame: ByteBuffer?
    var user: String
    /// The version it replaces; nil: only into an empty slot.
    var replacing: Int64?

    var keys: [String] { [playback, lock] + (deadlines.map { [$0] } ?? []) }
    var arguments: [RedisArgument] {
        [
            .integer(version), .integer(epoch), .bytes(state), .string(holder ?? ""), .integer(ttlMs), .string(channel),
            frame.map { .bytes($0) } ?? .string(""), .string(user), replacing.map { .integer($0) } ?? .string(""),
        ]
    }
}

/// One of the user's REST requests from a token bucket shared by every node.
/// Returns 0 when taken, else the ms until a token is.
struct RequestTokenScript: RedisScriptCall {
    static let lua = DeadlineLua.functions + """
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

    var bucket: String
    var rate: Int
    var burst: Int

    var keys: [String] { [bucket] }
    var arguments: [RedisArgument] { [.integer(Int64(max(rate, 1))), .integer(Int64(max(burst, 1)))] }
}
