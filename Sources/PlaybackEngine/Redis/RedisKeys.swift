/// One user's keys. All carry the hash tag `{u:<id>}`, so Redis Cluster keeps a user in one slot
/// and the commit script may touch them together.
///
/// | key | type | content |
/// |---|---|---|
/// | `pb:{u:ID}` | hash | `version`, `epoch`, `state` (the `Playback` as JSON) |
/// | `lock:{u:ID}` | string, PX TTL | `<device>|<epoch>`: the lease, renewed by the node holding the device |
/// | `dev:{u:ID}` | hash | device id → JSON `{name, kind, last_seen, session, node}` |
/// | `online:{u:ID}` | sorted set | device id, scored by when its presence expires (ms) |
/// | `req:{u:ID}:<request id>` | string, PX 10 min | the first final answer to that request |
/// | channel `ev:{u:ID}` | pub/sub | committed changes, device lists, replacements |
struct RedisKeys {
    let user: String

    var tag: String { "{u:\(user)}" }
    var playback: String { "pb:\(tag)" }
    var lock: String { "lock:\(tag)" }
    var devices: String { "dev:\(tag)" }
    var online: String { "online:\(tag)" }
    var channel: String { "ev:\(tag)" }

    func request(_ id: String) -> String { "req:\(tag):\(id)" }

    /// The user of an `ev:{u:ID}` channel.
    static func user(ofChannel channel: String) -> String? {
        guard channel.hasPrefix("ev:{u:"), channel.hasSuffix("}") else { return nil }
        return String(channel.dropFirst(6).dropLast())
    }
}

/// The Lua scripts of the Redis engine.
enum RedisScripts {
    /// Commits a change if the state is still at the expected version, and if the request id was
    /// not answered already (on any node). Writes the state, moves or clears the lease, records the
    /// answer and publishes the change, atomically.
    /// KEYS: pb, lock, req. ARGV: expected version, new version, new epoch, state JSON, lease op
    /// (keep|set|del), lock value, lock TTL ms, channel, message JSON, record request (0|1),
    /// answer JSON, answer TTL ms.
    /// Returns {1, version} on commit, {0, current version} on conflict, {2, answer} for a known request.
    static let commit = """
        if ARGV[10] == '1' then
          local known = redis.call('GET', KEYS[3])
          if known then return {2, known} end
        end
        local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
        if current ~= tonumber(ARGV[1]) then return {0, current} end
        redis.call('HSET', KEYS[1], 'version', ARGV[2], 'epoch', ARGV[3], 'state', ARGV[4])
        if ARGV[5] == 'set' then
          redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[7])
        elseif ARGV[5] == 'del' then
          redis.call('DEL', KEYS[2])
        end
        if ARGV[10] == '1' then redis.call('SET', KEYS[3], ARGV[11], 'PX', ARGV[12]) end
        redis.call('PUBLISH', ARGV[8], ARGV[9])
        return {1, tonumber(ARGV[2])}
        """

    /// Puts a restored playback back into an empty slot (Redis lost it) and announces it; does
    /// nothing if some node restored or committed meanwhile.
    /// KEYS: pb, lock. ARGV: version, epoch, state JSON, lock value ('' for none), lock TTL ms,
    /// channel, message JSON ('' for none). Returns 1 when restored, 0 when the slot was taken.
    static let restore = """
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        redis.call('HSET', KEYS[1], 'version', ARGV[1], 'epoch', ARGV[2], 'state', ARGV[3])
        if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5]) end
        if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
        return 1
        """

    /// Sets the lease's TTL if it still names this holder. KEYS: lock. ARGV: value, TTL ms.
    static let renew = """
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
        return 0
        """
}

/// What travels on a user's channel between nodes.
struct BusMessage: Codable, Sendable {
    struct Replacement: Codable, Sendable {
        var device: String
        var session: String
    }

    /// A committed change.
    var event: PlaybackEvent?
    /// The user's device list, sent to every device except `except`.
    var devices: [DeviceInfo]?
    var except: String?
    /// A device connected anew: its other connections are closed with 4001.
    var replace: Replacement?
}

/// A device as stored in `dev:{u:ID}`.
struct StoredDevice: Codable, Sendable {
    var name: String
    var kind: DeviceKind
    var lastSeen: Int64
    var session: String?
    var node: String?

    enum CodingKeys: String, CodingKey {
        case name, kind, session, node
        case lastSeen = "last_seen"
    }
}
