import Foundation
import Logging
import Metrics
import NIOCore
import RedisClient
import Synchronization

/// The storage of the multi-node engine: each user's keys in Redis (`RedisKeys`, one hash tag per
/// user), one Lua script per operation (`RedisScripts`), the user's pub/sub channel as the bus.
///
/// On a Redis Cluster (`redis+cluster://`) every script still touches one user's slot only: the
/// channel is a shard channel (`SPUBLISH` in the scripts, `SSUBSCRIBE` at the slot's master), and
/// the lease deadlines, which the sweep reads across users, live in buckets of their own that this
/// type moves before the script that takes or keeps a lease (so a node that dies in between leaves
/// a deadline for the sweep to check, never a lease nobody sweeps).
public final class RedisStorage: PlaybackStorage {
    let redis: any RedisCommands
    let subscriber: any RedisPubSub
    /// True on a Redis Cluster.
    let clustered: Bool
    private let logger: Logger
    private let handlers: BusHandlers.Slot

    private let commandScript: RedisScript
    private let renewScript: RedisScript
    private let restoreScript: RedisScript
    private let joinScript: RedisScript
    private let leaveScript: RedisScript
    private let presenceScript = RedisScript(RedisScripts.presence)
    private let rewriteScript = RedisScript(RedisScripts.rewrite)
    private let takeScript = RedisScript(RedisScripts.take)
    private let lapseScript = RedisScript(RedisScripts.lapse)
    private let sweepScript = RedisScript(RedisScripts.sweep)
    private let settleScript = RedisScript(RedisScripts.settle)
    private let deferScript = RedisScript(RedisScripts.deferSweep)
    private let requestTokenScript = RedisScript(RedisScripts.requestToken)

    init(configuration: RedisConfiguration, nodeID: String, logger: Logger) {
        var commands = configuration
        commands.clientName = "playback-syncd:\(nodeID)"
        var pubsub = configuration
        pubsub.clientName = "playback-syncd:\(nodeID):pubsub"
        self.logger = logger
        clustered = configuration.isCluster
        let publishing: (String) -> RedisScript = { source in RedisScript(configuration.isCluster ? RedisScripts.sharded(source) : source) }
        commandScript = publishing(RedisScripts.command)
        renewScript = publishing(RedisScripts.renew)
        restoreScript = publishing(RedisScripts.restore)
        joinScript = publishing(RedisScripts.join)
        leaveScript = publishing(RedisScripts.leave)
        // Frames go where `start` says (the subscriber is made before it).
        let handlers = BusHandlers.Slot()
        self.handlers = handlers
        let onMessage: RedisSubscriber.MessageHandler = { channel, payload in
            guard let user = RedisKeys.user(ofChannel: channel) else { return }
            do {
                let frame = try BusMessage(decoding: payload)
                handlers.current?.frame(user, frame)
            } catch {
                logger.error("undecodable bus message", metadata: ["user.id": .string(user), "error": .string("\(error)")])
            }
        }
        if configuration.isCluster {
            let cluster = RedisClusterClient(configuration: commands, logger: logger)
            redis = cluster
            subscriber = RedisShardedSubscriber(
                cluster: cluster, configuration: pubsub, logger: logger,
                onResubscribed: { channels in handlers.current?.resubscribed(channels.compactMap(RedisKeys.user(ofChannel:))) },
                onMessage: onMessage)
        } else {
            redis = RedisClient(configuration: commands, logger: logger)
            subscriber = RedisSubscriber(
                configuration: pubsub, logger: logger, onResubscribed: { handlers.current?.resubscribed(nil) }, onMessage: onMessage)
        }
    }

    /// The KEYS tail of the scripts that move a lease's deadline: the one set on a single Redis,
    /// nothing on a cluster (`indexLease` moves it there).
    private var deadlineKeys: [String] { clustered ? [] : [RedisKeys.leaseDeadlines] }

    /// On a cluster: the user's lease deadline `ms` from now in its bucket, before the script that
    /// takes or keeps the lease. A failure is logged and counted, not thrown: the next renewal
    /// moves it again, and the nodes with the user's devices check the lease themselves.
    private func indexLease(user: String, ms: Int64) -> EventLoopFuture<Void> {
        redis.evaluateFuture(deferScript, keys: [RedisKeys(user: user).deadlineBucket], arguments: [.integer(ms), .string(user)])
            .map { reply in
                if case .error(let message) = reply { self.indexFailed(user: user, message) }
            }
            .recover { error in self.indexFailed(user: user, "\(error)") }
    }

    private func indexFailed(user: String, _ message: String) {
        Counter(label: "playback_lease_index_failures_total").increment()
        logger.warning("lease deadline not indexed", metadata: ["user.id": .string(user), "error": .string(message)])
    }

    public var busLagMs: Int64 { subscriber.lag.ms(nowNs: DispatchTime.now().uptimeNanoseconds) }

    public func attach(onFrame: @escaping @Sendable (String, BusMessage) -> Void, onResubscribed: @escaping @Sendable ([String]?) -> Void) {
        handlers.current = BusHandlers(frame: onFrame, resubscribed: onResubscribed)
    }

    /// Runs the pub/sub connection, reconnecting, until cancelled or `shutdown`.
    public func run() async {
        await subscriber.run()
    }

    public func waitUntilReady(timeout: Duration) async -> Bool {
        if await subscriber.waitUntilConnected(timeout: timeout) {
            logger.info("redis engine started", metadata: ["redis": .string(redis.endpoint)])
            return true
        }
        logger.error("redis unreachable at start; serving and retrying", metadata: ["redis": .string(redis.endpoint)])
        return false
    }

    public func subscribe(user: String) async throws {
        try await subscriber.subscribe(RedisKeys(user: user).channel)
    }

    public func unsubscribe(user: String) async {
        try? await subscriber.unsubscribe(RedisKeys(user: user).channel)
    }

    public func loadPlayback(user: String) async throws -> Playback? {
        guard case .bulkString(let stored) = try await redis.send(["HGET", .string(RedisKeys(user: user).playback), "state"]) else { return nil }
        return try JSONDecoder().decode(Playback.self, from: Data(stored.readableBytesView))
    }

    public func loadDirectory(user: String, now: Int64, retentionMs: Int64) async throws -> DeviceDirectory {
        let keys = RedisKeys(user: user)
        async let storedReply = redis.send(["HGETALL", .string(keys.devices)])
        async let onlineReply = redis.send(["ZRANGE", .string(keys.online), "0", "-1", "WITHSCORES"])
        let (stored, online) = try await (storedReply, onlineReply)
        var presence: [String: Int64] = [:]
        let onlineParts = online.array ?? []
        for index in stride(from: 0, to: onlineParts.count - 1, by: 2) {
            if let id = onlineParts[index].string, let expiry = onlineParts[index + 1].string.flatMap(Double.init) { presence[id] = Int64(expiry) }
        }
        var entries: [String: StoredDevice] = [:]
        let storedParts = stored.array ?? []
        for index in stride(from: 0, to: storedParts.count - 1, by: 2) {
            guard let id = storedParts[index].string, case .bulkString(let json) = storedParts[index + 1],
                let device = try? JSONDecoder().decode(StoredDevice.self, from: Data(json.readableBytesView))
            else { continue }
            entries[id] = device
        }
        return DeviceDirectory(entries: entries, presence: presence, now: now, retentionMs: retentionMs)
    }

    public func command(user: String, _ call: CommandCall, completion: @escaping @Sendable (Result<CommandReply, any Error>) -> Void) {
        let keys = RedisKeys(user: user)
        let remember = call.requestID != nil
        var arguments: [RedisArgument] = [
            .integer(call.expectedVersion), .integer(remember ? Int64(call.answerCapacity) : 0),
            remember ? .bytes(StoredAnswer.json(call.answer)) : .string(""),
            .integer(call.answerTTLMs),
        ]
        if let change = call.change {
            let (leaseOp, lock, ttl): (String, String, Int64) =
                switch change.lease {
                case .keep: ("keep", "", 0)
                case .set(let holder, let ttlMs): ("set", holder, ttlMs)
                case .clear: ("del", "", 0)
                }
            arguments += [
                "commit", .integer(change.playback.version), .integer(change.playback.epoch), .bytes(change.json), .string(leaseOp),
                .string(lock), .integer(ttl), .string(keys.channel), .bytes(change.frame.encodedHead(storedLength: change.json.readableBytes)),
                .string(user),
            ]
        } else {
            arguments.append("confirm")
        }
        let scriptArguments = arguments
        let scriptKeys = [keys.playback, keys.lock, keys.request(call.requestID ?? "-"), keys.requests] + deadlineKeys
        if clustered, case .set(_, let ttlMs) = call.change?.lease {
            // The deadline first: a node that dies between the two leaves one to sweep.
            indexLease(user: user, ms: ttlMs).whenComplete { _ in
                self.redis.evaluateFuture(self.commandScript, keys: scriptKeys, arguments: scriptArguments)
                    .whenComplete { result in completion(result.flatMap(Self.commandReply)) }
            }
            return
        }
        redis.evaluateFuture(commandScript, keys: scriptKeys, arguments: arguments)
            .whenComplete { result in completion(result.flatMap(Self.commandReply)) }
    }

    private static func commandReply(_ reply: RESPValue) -> Result<CommandReply, any Error> {
        guard case .array(let parts) = reply, let status = parts.first?.int else {
            return .failure(RedisError(.protocolError, "unexpected command reply \(reply)"))
        }
        switch (status, parts.count > 1 ? parts[1] : .null) {
        case (1, _):
            return .success(.done)
        case (3, .integer(let retryAfterMs)):
            return .success(.full(retryAfterMs: retryAfterMs))
        case (2, .bulkString(let stored)):
            guard let answer = try? StoredAnswer.decode(stored) else { return .failure(RedisError(.protocolError, "unreadable remembered answer")) }
            return .success(.known(answer))
        case (0, _):
            guard parts.count > 2, case .bulkString(let json) = parts[2] else { return .success(.conflict(nil, json: nil)) }
            guard let playback = try? JSONDecoder().decode(Playback.self, from: Data(json.readableBytesView)) else {
                return .failure(RedisError(.protocolError, "unreadable stored playback"))
            }
            return .success(.conflict(playback, json: json))
        default:
            return .failure(RedisError(.protocolError, "unexpected command reply \(reply)"))
        }
    }

    public func join(user: String, device: String, entry: StoredDevice, presenceUntil: Int64, cap: Int, frame: BusMessage) async throws -> Bool {
        let keys = RedisKeys(user: user)
        return try await redis.evaluate(
            joinScript, keys: [keys.devices, keys.online],
            arguments: [
                .string(device), .bytes(try Self.json(entry)), .integer(presenceUntil), .string(keys.channel), .bytes(frame.encoded()),
                .integer(entry.lastSeen), .integer(Int64(cap)),
            ]).int == 1
    }

    public func leave(user: String, device: String, session: String, entry: StoredDevice, frame: BusMessage) async throws -> Bool {
        let keys = RedisKeys(user: user)
        let reply = try await redis.evaluate(
            leaveScript, keys: [keys.devices, keys.online],
            arguments: [.string(device), .string(session), .bytes(try Self.json(entry)), .string(keys.channel), .bytes(frame.encoded())])
        return reply.int == 1
    }

    public func register(user: String, entries: [(device: String, entry: StoredDevice)], presenceUntil: Int64) async throws {
        guard !entries.isEmpty else { return }
        let keys = RedisKeys(user: user)
        var fields: [RedisArgument] = ["HSET", .string(keys.devices)]
        var online: [RedisArgument] = ["ZADD", .string(keys.online)]
        for (device, entry) in entries {
            fields += [.string(device), .bytes(try Self.json(entry))]
            online += [.integer(presenceUntil), .string(device)]
        }
        _ = try await redis.send(fields)
        _ = try await redis.send(online)
    }

    public func rewrite(user: String, entries: [(device: String, session: String, entry: StoredDevice)]) async throws {
        guard !entries.isEmpty else { return }
        var arguments: [RedisArgument] = []
        for (device, session, entry) in entries { arguments += [.string(device), .string(session), .bytes(try Self.json(entry))] }
        _ = try await redis.evaluate(rewriteScript, keys: [RedisKeys(user: user).devices], arguments: arguments)
    }

    public func refreshPresence(
        user: String, devices: [(device: String, session: String)], now: Int64, until: Int64
    ) async throws -> (missing: Int, online: Set<String>) {
        let keys = RedisKeys(user: user)
        var arguments: [RedisArgument] = [.integer(now), .integer(until)]
        for (device, session) in devices { arguments += [.string(device), .string(session)] }
        let reply = try await redis.evaluate(presenceScript, keys: [keys.online, keys.devices], arguments: arguments)
        guard case .array(let parts) = reply, parts.count == 2, let missing = parts[0].int else {
            throw RedisError(.protocolError, "unexpected presence reply \(reply)")
        }
        return (Int(missing), Set((parts[1].array ?? []).compactMap(\.string)))
    }

    public func takeLease(user: String, holder: String, epoch: Int64, ttlMs: Int64, seen: Int64) async throws -> Bool {
        let keys = RedisKeys(user: user)
        if clustered { try await indexLease(user: user, ms: ttlMs).get() }
        return try await redis.evaluate(
            takeScript, keys: [keys.playback, keys.lock] + deadlineKeys,
            arguments: [.string(holder), .integer(epoch), .integer(ttlMs), .integer(seen), .string(user)]
        ).int == 1
    }

    public func renewLease(user: String, holder: String, epoch: Int64, ttlMs: Int64, seen: Int64) async throws -> Bool {
        let keys = RedisKeys(user: user)
        let indexed = clustered ? indexLease(user: user, ms: ttlMs) : nil
        let renewed = try await redis.evaluate(
            renewScript, keys: [keys.lock, keys.playback] + deadlineKeys,
            arguments: [.string(holder), .integer(ttlMs), .integer(epoch), .integer(seen), .string(user)]
        ).int == 1
        try await indexed?.get()
        return renewed
    }

    public func leaseLapse(user: String, epoch: Int64) async throws -> LeaseLapse {
        let keys = RedisKeys(user: user)
        let reply = try await redis.evaluate(lapseScript, keys: [keys.lock, keys.playback], arguments: [])
        guard case .array(let parts) = reply, parts.count == 2, let held = parts[0].int else {
            throw RedisError(.protocolError, "unexpected lapse reply \(reply)")
        }
        if held == 1 { return .held }
        return .lapsed(seen: parts[1].string.flatMap { LeaseHolder.seen(in: $0, epoch: epoch) })
    }

    public func lapsedLeases(limit: Int, claimMs: Int64, marginMs: Int64) async throws -> [String] {
        let arguments: [RedisArgument] = [.integer(claimMs), .integer(Int64(max(1, limit))), .integer(marginMs)]
        guard clustered else {
            let reply = try await redis.evaluate(sweepScript, keys: [RedisKeys.leaseDeadlines], arguments: arguments)
            return (reply.array ?? []).compactMap(\.string)
        }
        // Every bucket, side by side; a bucket whose master is failing over waits for the next sweep.
        let replies = (0..<RedisKeys.deadlineBuckets).map { bucket in
            redis.evaluateFuture(sweepScript, keys: [RedisKeys.leaseDeadlines(bucket: bucket)], arguments: arguments)
        }
        var due: [String] = []
        var failure: (any Error)?
        for reply in replies {
            do {
                due += (try await reply.get().array ?? []).compactMap(\.string)
            } catch {
                failure = error
            }
        }
        if due.isEmpty, let failure { throw failure }
        return due
    }

    public func deferLeaseSweep(user: String, ms: Int64) async throws {
        let key = clustered ? RedisKeys(user: user).deadlineBucket : RedisKeys.leaseDeadlines
        _ = try await redis.evaluate(deferScript, keys: [key], arguments: [.integer(ms), .string(user)])
    }

    public func markAlive(node: String, ttlMs: Int64) async throws {
        _ = try await redis.send(["SET", .string(RedisKeys.node(node)), "1", "PX", .integer(ttlMs)])
    }

    public func liveNode(of device: String, user: String) async throws -> String? {
        guard case .bulkString(let json) = try await redis.send(["HGET", .string(RedisKeys(user: user).devices), .string(device)]),
            let entry = try? JSONDecoder().decode(StoredDevice.self, from: Data(json.readableBytesView)), entry.session != nil,
            let node = entry.node
        else { return nil }
        return try await redis.send(["EXISTS", .string(RedisKeys.node(node))]).int == 1 ? node : nil
    }

    public func settleLeaseDeadline(user: String) async throws {
        let keys = RedisKeys(user: user)
        guard clustered else {
            _ = try await redis.evaluate(settleScript, keys: [keys.lock, RedisKeys.leaseDeadlines], arguments: [.string(user)])
            return
        }
        // The lock and the bucket are in different slots: the TTL read first, then the bucket moved.
        let ttl = try await redis.send(["PTTL", .string(keys.lock)]).int ?? -2
        if ttl > 0 {
            _ = try await redis.evaluate(deferScript, keys: [keys.deadlineBucket], arguments: [.integer(ttl), .string(user)])
        } else {
            _ = try await redis.send(["ZREM", .string(keys.deadlineBucket), .string(user)])
        }
    }

    public func restore(
        user: String, playback: Playback, holder: String?, ttlMs: Int64, frame: BusMessage?, replacing: Int64?
    ) async throws -> Bool {
        let keys = RedisKeys(user: user)
        if clustered, holder != nil { try await indexLease(user: user, ms: ttlMs).get() }
        let reply = try await redis.evaluate(
            restoreScript, keys: [keys.playback, keys.lock] + deadlineKeys,
            arguments: [
                .integer(playback.version), .integer(playback.epoch), .bytes(ByteBuffer(bytes: PlaybackJSON.encode(playback))),
                .string(holder ?? ""), .integer(ttlMs), .string(keys.channel), frame.map { .bytes($0.encoded()) } ?? .string(""),
                .string(user), replacing.map { .integer($0) } ?? .string(""),
            ])
        return reply.int == 1
    }

    public func takeRequestToken(user: String, rate: Int, burst: Int) async throws -> Int64? {
        let wait = try await redis.evaluate(
            requestTokenScript, keys: [RedisKeys(user: user).requestBucket], arguments: [.integer(Int64(max(rate, 1))), .integer(Int64(max(burst, 1)))]
        ).int ?? 0
        return wait > 0 ? wait : nil
    }

    public func readiness() async -> (ready: Bool, checks: [String: String]) {
        let ping = subscriber.isConnected ? try? await redis.send(["PING"]) : nil
        let up = ping == .simpleString("PONG")
        return (up, ["redis": up ? "up" : (subscriber.isConnected ? "down" : "down (pub/sub disconnected)")])
    }

    public func shutdown() async {
        await subscriber.stop()
        await redis.shutdown()
    }

    private static func json(_ value: some Encodable) throws -> ByteBuffer {
        ByteBuffer(bytes: try JSONEncoder().encode(value))
    }
}

/// A request's final answer as stored under `req:{u:ID}:<id>`.
struct StoredAnswer: Codable {
    var version: Int64?
    var entry: String?
    var error: ServerMessage.ErrorReply?

    init(_ answer: Result<Receipt, PlaybackError>) {
        switch answer {
        case .success(let receipt):
            version = receipt.version
            entry = receipt.entry
        case .failure(let error):
            self.error = ServerMessage.ErrorReply(id: nil, error: error)
        }
    }

    var result: Result<Receipt, PlaybackError> {
        if let error { return .failure(error.error) }
        return .success(Receipt(version: version ?? 0, entry: entry, changed: false))
    }

    static func decode(_ stored: ByteBuffer) throws -> Result<Receipt, PlaybackError> {
        try JSONDecoder().decode(StoredAnswer.self, from: Data(stored.readableBytesView)).result
    }

    /// A success is written by hand (it is on every command with an id); errors are rare.
    static func json(_ answer: Result<Receipt, PlaybackError>) -> ByteBuffer {
        if case .success(let receipt) = answer {
            var buffer = ByteBuffer(string: #"{"version":"#)
            buffer.writeString(String(receipt.version))
            if let entry = receipt.entry {
                buffer.writeString(#","entry":"#)
                buffer.writeBytes(ServerMessageJSON.encode(string: entry))
            }
            buffer.writeString("}")
            return buffer
        }
        // A StoredAnswer is plain strings and numbers: encoding it cannot fail.
        return (try? ByteBuffer(bytes: JSONEncoder().encode(StoredAnswer(answer)))) ?? ByteBuffer(string: "{}")
    }
}
