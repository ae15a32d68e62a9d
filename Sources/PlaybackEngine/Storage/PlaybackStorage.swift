import NIOCore

/// Where users' playback, leases and devices live, and how the nodes that have devices of a user
/// hear of its changes (the bus). `UserPlayback`, the per-user logic both engines share, runs
/// on it: `MemoryStorage` keeps everything in this process, `RedisStorage` in Redis, with one
/// script per operation and pub/sub as the bus.
///
/// Every operation is about one user's keys, so a storage can shard users (Redis Cluster).
public protocol PlaybackStorage: Sendable {
    /// What it is, for traces (`db.system`): `redis` or `memory`.
    var system: String { get }
    /// Where the frames of the users this node subscribes to go, and who hears that frames may
    /// have been lost (the bus reconnected). Set once, before `run`.
    func attach(onFrame: @escaping @Sendable (_ user: String, BusMessage) -> Void, onResubscribed: @escaping @Sendable (_ users: [String]?) -> Void)
    /// Keeps the bus connected until cancelled or shut down (returns at once when there is
    /// nothing to keep).
    func run() async
    /// Waits until the bus is up, at most `timeout`; false when it is not (`readiness` says so).
    func waitUntilReady(timeout: Duration) async -> Bool
    /// How far behind this node's reading of the bus is, ms: changes committed now reach its
    /// devices about this much later. 0 where the bus is in-process.
    var busLagMs: Int64 { get }

    func subscribe(user: String) async throws
    func unsubscribe(user: String) async

    /// The stored playback; nil when there is none (a new user, or the storage lost it).
    func loadPlayback(user: String) async throws -> Playback?
    /// Sets a user nobody uses (the stored playback at `version`, no lease, no device present) to
    /// leave the storage after `ttlMs`; true when it did. Anything that comes back keeps it.
    func expireIfIdle(user: String, version: Int64, ttlMs: Int64) async throws -> Bool
    /// The user's devices with their presence at `now`; offline ones last seen more than
    /// `retentionMs` ago are left out.
    func loadDirectory(user: String, now: Int64, retentionMs: Int64) async throws -> DeviceDirectory

    /// The one call of a command: see `CommandCall`.
    func command(user: String, _ call: CommandCall, completion: @escaping @Sendable (Result<CommandReply, any Error>) -> Void)

    /// A device connected: its entry, its presence until `presenceUntil`, and `frame` on the bus;
    /// false (and nothing written) when `cap` other devices are online already, on any node. Past
    /// `cap` entries, the offline devices seen longest ago are forgotten until `cap` remain.
    func join(user: String, device: String, entry: StoredDevice, presenceUntil: Int64, cap: Int, frame: BusMessage) async throws -> Bool
    /// A device's connection ended: offline if the entry still names `session`; false otherwise.
    func leave(user: String, device: String, session: String, entry: StoredDevice, frame: BusMessage) async throws -> Bool
    /// Writes entries and presence again (the storage lost them while the devices stayed connected).
    func register(user: String, entries: [(device: String, entry: StoredDevice)], presenceUntil: Int64) async throws
    /// Rewrites the entries that still name `session` (a connection's details changed, e.g. its
    /// round trip); an entry a newer connection of the device took over is left alone.
    func rewrite(user: String, entries: [(device: String, session: String, entry: StoredDevice)]) async throws
    /// Extends the presence of `devices` whose entries still name their session (one that left
    /// meanwhile stays offline); answers how many had no entry (the storage lost them) and who is online.
    func refreshPresence(user: String, devices: [(device: String, session: String)], now: Int64, until: Int64) async throws -> (missing: Int, online: Set<String>)

    /// Sets the lease to `holder` (`LeaseHolder.value`, at `epoch`) for `ttlMs`, a compare-and-set:
    /// only while the stored playback is still at `epoch` and no holder of a later epoch has the
    /// lease; records `seen` as the moment the holder was last known connected. False when refused.
    func takeLease(user: String, holder: String, epoch: Int64, ttlMs: Int64, seen: Int64) async throws -> Bool
    /// Sets the TTL of the lease if it still names `holder` (at `epoch`), recording `seen`; false
    /// when it does not.
    func renewLease(user: String, holder: String, epoch: Int64, ttlMs: Int64, seen: Int64) async throws -> Bool
    /// Whether the lease is held, or lapsed; a lapsed one tells when the holder at `epoch` was last
    /// known connected (nil when that was not recorded).
    func leaseLapse(user: String, epoch: Int64) async throws -> LeaseLapse
    /// Users whose lease deadline passed more than `marginMs` ago, each claimed for `claimMs` so
    /// that one node sweeps it (whichever nodes their devices were on: the node that kept the
    /// lease may be dead).
    func lapsedLeases(limit: Int, claimMs: Int64, marginMs: Int64) async throws -> [String]
    /// After a sweep: the user leaves the deadlines unless somebody holds the lease again (then its
    /// deadline is put right).
    func settleLeaseDeadline(user: String) async throws
    /// Sweeps the user again in `ms` (its holder's node is alive and takes the lease back itself).
    func deferLeaseSweep(user: String, ms: Int64) async throws

    /// This node is alive for `ttlMs` more (refreshed by its upkeep).
    func markAlive(node: String, ttlMs: Int64) async throws
    /// The node another node's device is connected to, when the device is connected (its directory
    /// entry names a session), if that node is alive.
    func liveNode(of device: String, user: String) async throws -> String?

    /// Puts a restored playback in place if the user still has none (or, with `replacing`, still
    /// has that version: the storage went back in time), the lease to `holder` (none: no lease),
    /// and `frame` on the bus; false when some node restored or committed first.
    func restore(user: String, playback: Playback, holder: String?, ttlMs: Int64, frame: BusMessage?, replacing: Int64?) async throws -> Bool

    /// Takes one of the user's REST requests from a token bucket every node shares (`rate` per
    /// second, `burst`): nil when taken, else the ms until one is. A storage that serves one node
    /// answers nil (that node's own limiter is the user's).
    func takeRequestToken(user: String, rate: Int, burst: Int) async throws -> Int64?

    /// Whether commands can be served, and the condition of each dependency (for `/readyz`).
    func readiness() async -> (ready: Bool, checks: [String: String])
    func shutdown() async
}

/// One command's call to the storage: answer a remembered request id; wait while another command
/// has the user's turn (`turn`); check that the playback is still at `expectedVersion` (else answer
/// with the current one, so the retry needs no read); then
/// commit `change` (write the playback, move or clear the lease, remember the answer, publish the
/// frame) or, for a command that changed nothing, just remember the answer.
public struct CommandCall: Sendable {
    public struct Change: Sendable {
        public var playback: Playback
        /// The playback as stored (`PlaybackJSON`), also appended to the frame for other nodes.
        public var json: ByteBuffer
        public var lease: LeaseOperation
        public var frame: BusMessage
    }

    public enum LeaseOperation: Sendable, Equatable {
        case keep
        /// The lease to this holder for `ttlMs`.
        case set(holder: String, ttlMs: Int64)
        case clear
    }

    public var expectedVersion: Int64
    /// The request id to remember the answer under, when it is remembered.
    public var requestID: String?
    public var answer: Result<Receipt, PlaybackError>
    public var answerTTLMs: Int64
    /// Most request ids the user may have remembered inside the window.
    public var answerCapacity: Int
    public var change: Change?
    /// Set when the command asks for the user's turn (it lost rounds to other nodes): the storage
    /// gives it the turn when nobody has it, keeps the others waiting while it has it, and ends it
    /// when the command commits or confirms.
    public var turn: Turn?

    public struct Turn: Sendable, Equatable {
        /// This command's own token (no other command, on any node, has the same).
        public var token: String
        /// How long the turn lasts if its command never comes back (its node died).
        public var ttlMs: Int64
    }
}

/// What the storage answered to a `CommandCall`.
public enum CommandReply: Sendable {
    /// Committed, or confirmed at the expected version.
    case done
    /// The request id was answered before: this is that answer.
    case known(Result<Receipt, PlaybackError>)
    /// The playback moved on: here it is (nil when the storage has none: it lost it).
    case conflict(Playback?, json: ByteBuffer?)
    /// The user has as many request ids remembered as it may; one leaves the window in this long.
    case full(retryAfterMs: Int64)
    /// Another command has the user's turn, for at most this long: wait, then try again.
    case turnHeld(forMs: Int64)
}

/// What the storage says of a lease.
public enum LeaseLapse: Sendable, Equatable {
    case held
    /// Nobody holds it; `seen`: when its holder was last known connected.
    case lapsed(seen: Int64?)
}

/// The lease's value in storage: the holder and the epoch it holds it at.
public enum LeaseHolder {
    public static func value(of playback: Playback) -> String { "\(playback.activeDevice ?? "")|\(playback.epoch)" }

    /// The ms of a stored `<epoch>|<ms>` record of when the holder was seen, if it is of `epoch`.
    static func seen(in record: String, epoch: Int64) -> Int64? {
        let parts = record.split(separator: "|")
        guard parts.count == 2, Int64(parts[0]) == epoch else { return nil }
        return Int64(parts[1])
    }
}

extension PlaybackStorage {
    /// Restores a user the storage has no state of.
    func restore(user: String, playback: Playback, holder: String?, ttlMs: Int64, frame: BusMessage?) async throws -> Bool {
        try await restore(user: user, playback: playback, holder: holder, ttlMs: ttlMs, frame: frame, replacing: nil)
    }
}
