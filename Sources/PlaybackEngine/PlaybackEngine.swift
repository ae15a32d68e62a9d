@_exported import PlaybackCore
import Tracing
import NIOCore
import Synchronization

/// The user a connection or request acts for, from a verified token.
public struct UserIdentity: Sendable, Hashable {
    public var userID: String
    /// ISO 3166-1 alpha-2 country for licensing; nil when unknown.
    public var country: String?
    public var tier: String?

    public init(userID: String, country: String? = nil, tier: String? = nil) {
        self.userID = userID
        self.country = country
        self.tier = tier
    }
}

/// A server message encoded once; the same bytes go to every recipient.
public struct EncodedMessage: Sendable {
    public let type: String
    public let bytes: ByteBuffer
    /// Other forms of the same bytes (compressed per window size), made once on first use and
    /// shared by every connection that sends this message.
    public let variants: Variants

    public init(_ message: ServerMessage) {
        type = message.type
        if let written = ServerMessageJSON.encode(message) {
            bytes = ByteBuffer(bytes: written)
            variants = Variants()
            return
        }
        do {
            bytes = ByteBuffer(bytes: try MessageCodec().encode(message))
        } catch {
            // Encoding our own value types cannot fail; keep the invariant visible if it ever does.
            preconditionFailure("encoding \(message.type) failed: \(error)")
        }
        variants = Variants()
    }

    /// Bytes that are already a server message of this type (from another node).
    public init(type: String, bytes: ByteBuffer) {
        self.type = type
        self.bytes = bytes
        variants = Variants()
    }

    /// A small memo, by key, of derived payloads (nil results are remembered too).
    public final class Variants: Sendable {
        private let memo = Mutex<[Int: ByteBuffer?]>([:])

        public func value(for key: Int, make: () -> ByteBuffer?) -> ByteBuffer? {
            if let known = memo.withLock({ $0[key] }) { return known }
            let made = make()
            memo.withLock { $0[key] = made }
            return made
        }
    }
}

/// One connected device as the engine sees it: where to send its messages.
/// Implementations are called from any thread and must not block.
public protocol DeviceSink: AnyObject, Sendable {
    /// Unique per connection; a reconnect of the same device has a new one.
    var sessionID: String { get }
    func send(_ message: EncodedMessage)
    /// Closes the connection with a WebSocket close code (e.g. 4001 when replaced).
    func close(_ code: CloseCode, reason: String)
    /// The connection's last measured WebSocket round trip (ping → pong) in ms; nil before the first.
    var roundTripMs: Int? { get }
}

extension DeviceSink {
    public var roundTripMs: Int? { nil }
}

/// What the session adds to `welcome`.
public struct WelcomeParameters: Sendable {
    public var heartbeatMs: Int64
    public var limits: ServerMessage.Welcome.Limits

    public init(heartbeatMs: Int64, limits: ServerMessage.Welcome.Limits) {
        self.heartbeatMs = heartbeatMs
        self.limits = limits
    }
}

/// How a device's connection ended; decides what happens to its lease.
public enum DisconnectKind: String, Sendable {
    /// Client-initiated close 1000/1001 or `release`: the lease ends at once.
    case released
    /// Any other loss: the lease survives for the grace period.
    case lost
    /// A newer connection of the same device took over (4001): the lease stays.
    case replaced
}

/// Why a connection was refused after `hello`.
public struct ConnectRefusal: Error, Sendable, Equatable {
    public var code: CloseCode
    public var reason: String

    public init(code: CloseCode, reason: String) {
        self.code = code
        self.reason = reason
    }
}

/// An input to apply to a user's playback, with who sent it and how to answer it.
public struct Submission: Sendable {
    public var user: UserIdentity
    public var input: Input
    /// The sending device; nil for REST and the server itself.
    public var device: String?
    /// The request id (commands) or REST `Idempotency-Key`; repeated ids are answered from the log.
    public var requestID: String?
    public var ifVersion: Int64?
    /// The trace the command belongs to, when it is traced (`CommandTracing`).
    public var traceContext: ServiceContext?

    /// The request id answers are remembered under: commands only (reports and releases are not idempotent by id).
    public var rememberedRequestID: String? {
        if case .command = input { return requestID }
        return nil
    }

    public init(user: UserIdentity, input: Input, device: String?, requestID: String? = nil, ifVersion: Int64? = nil) {
        self.user = user
        self.input = input
        self.device = device
        self.requestID = requestID
        self.ifVersion = ifVersion
    }
}

/// The answer to an accepted submission.
public struct Receipt: Sendable, Equatable {
    /// The state's version after the submission.
    public var version: Int64
    /// The new entry, for `queue_add`.
    public var entry: String?
    /// False when nothing changed (or when answered from the idempotency log).
    public var changed: Bool

    public init(version: Int64, entry: String?, changed: Bool) {
        self.version = version
        self.entry = entry
        self.changed = changed
    }
}

/// The contract between the sessions (WebSocket, REST) and where playback lives.
///
/// Implementations serialize everything per user, broadcast each change to the user's devices
/// through their `DeviceSink`s (lease messages first, then `state`, each device in version
/// order), and own the lease: grace periods, expiry, release. `MemoryEngine` keeps everything in
/// this process; a Redis-backed engine shares it between nodes.
public protocol PlaybackEngine: Sendable {
    /// The catalog the engine plays from (for search).
    var catalog: any TrackCatalog { get }

    /// Registers the device's connection, sends it `welcome`, and tells the user's other devices.
    /// A second connection of the same device replaces the first (closed with 4001).
    func connect(
        user: UserIdentity, hello: ClientMessage.Hello, sink: any DeviceSink, welcome: WelcomeParameters
    ) async throws(ConnectRefusal)

    /// The connection `sessionID` of `device` ended.
    func disconnect(user: UserIdentity, device: String, sessionID: String, kind: DisconnectKind) async

    /// Applies an input and calls `completion` with the answer once the change (if any) is
    /// committed and on its way to the devices. Sessions call it from their event loop: it starts
    /// no task of its own in the common case.
    func submit(_ submission: Submission, completion: @escaping @Sendable (Result<Receipt, PlaybackError>) -> Void)

    /// The user's playback and devices, for REST.
    func snapshot(user: UserIdentity) async throws(PlaybackError) -> (state: PlayerState, devices: [DeviceInfo])

    /// The user's recently played tracks, newest first.
    func recentlyPlayed(user: UserIdentity, limit: Int) async throws(PlaybackError) -> [PlayedItem]

    /// Takes one of the user's REST requests from a budget (`rate` per second, `burst`) shared by
    /// every node of the engine: nil when taken, else the ms until one is. Nil too when the budget
    /// cannot be read (storage down): the node's own limiter still applies.
    func admitRequest(user: UserIdentity, rate: Int, burst: Int) async -> Int64?

    /// Whether the engine can serve, and how its dependencies are.
    func readiness() async -> Readiness

    /// Runs the engine's background work until `shutdown`: the bus, the lease upkeep and sweep,
    /// and the jobs handed to `perform`. The daemon runs it as a service of its `ServiceGroup`.
    func run() async

    /// Runs `job` as a child task of `run()` (work that synchronous code starts: it is owned by
    /// the engine and finished before it shuts down). False when the engine is shutting down and
    /// the job is dropped.
    @discardableResult
    func perform(_ job: @escaping @Sendable () async -> Void) -> Bool

    /// Asks `run()` to finish: it stops the upkeep and the bus, lets the jobs in hand complete,
    /// and writes what must be written. Returns at once.
    func beginShutdown()

    /// `beginShutdown()`, then waits until that is done (or does it, when `run()` never ran).
    func shutdown() async
}

extension PlaybackEngine {
    /// Applies an input; returns once the change (if any) is committed.
    public func submit(_ submission: Submission) async -> Result<Receipt, PlaybackError> {
        await withCheckedContinuation { continuation in submit(submission) { continuation.resume(returning: $0) } }
    }
}

/// What `/readyz` reports: whether commands can be served, and each dependency's condition.
public struct Readiness: Sendable, Equatable {
    /// False when commands cannot be served (Redis unreachable): take the node out of rotation.
    public var ready: Bool
    /// Dependency → "up", or what is wrong (e.g. PostgreSQL down with writes queued).
    public var checks: [String: String]

    public init(ready: Bool, checks: [String: String]) {
        self.ready = ready
        self.checks = checks
    }

    /// Ready, but something is queued or down that does not stop commands (PostgreSQL).
    public var degraded: Bool { ready && checks.values.contains { $0 != "up" } }
}

/// A remote control's connection (`hello` with `role: remote`): it gets what the user's devices
/// get, and is otherwise no device: never listed, never counted against the cap, never active, its
/// commands from no device.
public enum RemoteControl {
    /// The key of a remote's connection among the user's connections on a node: no device id has a
    /// colon, so a remote never replaces a device's connection (or the other way round).
    public static func key(_ id: String) -> String { "remote:" + id }

    public static func isKey(_ key: String) -> Bool { key.hasPrefix("remote:") }
}
