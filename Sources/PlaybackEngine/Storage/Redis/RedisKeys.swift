import Foundation
import NIOCore
import RedisClient

/// One user's keys (the scripts that use them: `Scripts/`). All carry the hash tag `{u:<id>}`, so Redis Cluster keeps a user in one slot
/// and the commit script may touch them together.
///
/// | key | type | content |
/// |---|---|---|
/// | `pb:{u:ID}` | hash | `version`, `epoch`, `state` (the `Playback` as JSON), `seen` (`<epoch>|<ms>`: when the holder was last known connected) |
/// | `lock:{u:ID}` | string, PX TTL | `<device>|<epoch>`: the lease, renewed by the node holding the device |
/// | `dev:{u:ID}` | hash | device id → JSON `{name, kind, last_seen, session, node}` |
/// | `online:{u:ID}` | sorted set | device id, scored by when its presence expires (ms) |
/// | `reqs:{u:ID}:<n>` | hash, PXAT | request id → the first final answer to that request, for the ids first answered in the n-th tenth of the window since the epoch (minutes, for the default 10); the key expires the window after its stretch ends, so an id is remembered 10–11 minutes; at most `idempotencyCapacity` ids over the user's live stretches |
/// | `req:{u:ID}:<request id>` | string, PX 10 min | the same, as the previous release kept it: read (never written) until the last of them expires |
/// | `rest:{u:ID}` | hash, PX | the user's REST token bucket (`tokens`, `at`), shared by every node |
/// | `turn:{u:ID}` | string, PX | the token of the command that has the user's turn (it lost rounds to other nodes; `CommandScript`) |
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
    var turn: String { "turn:\(tag)" }

    /// A request id's answer as the previous release remembered it (one key per id).
    func legacyRequest(_ id: String) -> String { "req:\(tag):\(id)" }
    /// The answers to the request ids first answered in `bucket` (`RequestBuckets`).
    func requests(bucket: Int64) -> String { "reqs:\(tag):\(bucket)" }
    /// The user's REST token bucket, shared by every node.
    var requestBucket: String { "rest:\(tag)" }

    /// The user of an `ev:{u:ID}` channel.
    static func user(ofChannel channel: String) -> String? {
        guard channel.hasPrefix("ev:{u:"), channel.hasSuffix("}") else { return nil }
        return String(channel.dropFirst(6).dropLast())
    }
}

/// The Lua scripts of the Redis engine.

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
