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
    public var system: String { "redis" }
    let redis: any RedisCommands
    let subscriber: any RedisPubSub
    /// True on a Redis Cluster.
    let clustered: Bool
    private let logger: Logger
    private let handlers: BusHandlers.Slot

    private let scripts: RedisScriptSet

    init(configuration: RedisConfiguration, nodeID: String, logger: Logger) {
        var commands = configuration
        commands.clientName = "playback-syncd:\(nodeID)"
        var pubsub = configuration
        pubsub.clientName = "playback-syncd:\(nodeID):pubsub"
        self.logger = logger
        clustered = configuration.isCluster
        scripts = RedisScriptSet(clustered: configuration.isCluster, [
            CommandScript.self, RenewScript.self, TakeScript.self, LapseScript.self, SweepScript.self, DeferSweepScript.self,
            SettleScript.self, RestoreScript.self, JoinScript.self, LeaveScript.self, RewriteScript.self, PresenceScript.self,
            RequestTokenScript.self, IdleScript.self,
        ])
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
            // A connection per event loop: a command's script and its reply stay on the loop that sent it.
            redis = RedisLoopClients(configuration: commands, logger: logger)
            // And a pub/sub connection per loop: a user's frames are read on the loop the user lives on.
            subscriber = RedisLoopSubscribers(
                configuration: pubsub, logger: logger,
                onResubscribed: { channels in handlers.current?.resubscribed(channels.compactMap(RedisKeys.user(ofChannel:))) },
                onMessage: onMessage)
        }
    }

    /// The deadlines key of the scripts that move a lease's deadline: the one set on a single
    /// Redis, none on a cluster (`indexLease` moves it there).
    private var deadlines: String? { clustered ? nil : RedisKeys.leaseDeadlines }

    private func evaluate(_ call: some RedisScriptCall) async throws -> RESPValue {
        try await redis.evaluate(scripts.script(for: call), keys: call.keys, arguments: call.arguments)
    }

    private func evaluateFuture(_ call: some RedisScriptCall) -> EventLoopFuture<RESPValue> {
        redis.evaluateFuture(scripts.script(for: call), keys: call.keys, arguments: call.arguments)
    }

    /// On a cluster: the user's lease deadline `ms` from now in its bucket, before the script that
    /// takes or keeps the lease. A failure is logged and counted, not thrown: the next renewal
    /// moves it again, and the nodes with the user's devices check the lease themselves.
    private func indexLease(user: String, ms: Int64) -> EventLoopFuture<Void> {
        evaluateFuture(DeferSweepScript(deadlines: RedisKeys(user: user).deadlineBucket, ms: ms, user: user))
            .map { reply in
                if case .error(let message) = reply { self.indexFailed(user: user, message) }
            }
            .recover { error in self.indexFailed(user: user, "\(error)") }
    }

    private func indexFailed(user: String, _ message: String) {
        Counter(label: "playback_lease_index_failures_total").increment()
        logger.warning("lease deadline not indexed", metadata: ["user.id": .string(user), "error": .string(message)])
    }

    public var busLagMs: Int64 { subscriber.lagMs }

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
        let script = CommandScript(user: user, call, deadlines: deadlines)
        if clustered, case .set(_, let ttlMs) = call.change?.lease {
            // The deadline first: a node that dies between the two leaves one to sweep.
            indexLease(user: user, ms: ttlMs).whenComplete { _ in
                self.evaluateFuture(script).whenComplete { result in completion(result.flatMap(CommandScript.reply)) }
            }
            return
        }
        evaluateFuture(script).whenComplete { result in completion(result.flatMap(CommandScript.reply)) }
    }

    public func join(user: String, device: String, entry: StoredDevice, presenceUntil: Int64, cap: Int, frame: BusMessage) async throws -> Bool {
        let keys = RedisKeys(user: user)
        return try await evaluate(JoinScript(
            devices: keys.devices, online: keys.online, playback: keys.playback, device: device, entry: try Self.json(entry), presenceUntil: presenceUntil,
            channel: keys.channel, frame: frame.encoded(), now: entry.lastSeen, cap: cap)
        ).int == 1
    }

    public func expireIfIdle(user: String, version: Int64, ttlMs: Int64) async throws -> Bool {
        try await evaluate(IdleScript(user: user, version: version, ttlMs: ttlMs)).int == 1
    }

    public func leave(user: String, device: String, session: String, entry: StoredDevice, frame: BusMessage) async throws -> Bool {
        let keys = RedisKeys(user: user)
        return try await evaluate(LeaveScript(
            devices: keys.devices, online: keys.online, device: device, session: session, entry: try Self.json(entry),
            channel: keys.channel, frame: frame.encoded())
        ).int == 1
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
        let encoded = try entries.map { (device: $0.device, session: $0.session, entry: try Self.json($0.entry)) }
        _ = try await evaluate(RewriteScript(devices: RedisKeys(user: user).devices, entries: encoded))
    }

    public func refreshPresence(
        user: String, devices: [(device: String, session: String)], now: Int64, until: Int64
    ) async throws -> (missing: Int, online: Set<String>) {
        let keys = RedisKeys(user: user)
        let reply = try await evaluate(PresenceScript(online: keys.online, devices: keys.devices, now: now, until: until, sessions: devices))
        guard case .array(let parts) = reply, parts.count == 2, let missing = parts[0].int else {
            throw RedisError(.protocolError, "unexpected presence reply \(reply)")
        }
        return (Int(missing), Set((parts[1].array ?? []).compactMap(\.string)))
    }

    public func takeLease(user: String, holder: String, epoch: Int64, ttlMs: Int64, seen: Int64) async throws -> Bool {
        let keys = RedisKeys(user: user)
        if clustered { try await indexLease(user: user, ms: ttlMs).get() }
        return try await evaluate(TakeScript(
            playback: keys.playback, lock: keys.lock, deadlines: deadlines, holder: holder, epoch: epoch, ttlMs: ttlMs, seen: seen, user: user)
        ).int == 1
    }

    public func renewLease(user: String, holder: String, epoch: Int64, ttlMs: Int64, seen: Int64) async throws -> Bool {
        let keys = RedisKeys(user: user)
        let indexed = clustered ? indexLease(user: user, ms: ttlMs) : nil
        let renewed = try await evaluate(RenewScript(
            lock: keys.lock, playback: keys.playback, deadlines: deadlines, holder: holder, ttlMs: ttlMs, epoch: epoch, seen: seen, user: user)
        ).int == 1
        try await indexed?.get()
        return renewed
    }

    public func leaseLapse(user: String, epoch: Int64) async throws -> LeaseLapse {
        let keys = RedisKeys(user: user)
        let reply = try await evaluate(LapseScript(lock: keys.lock, playback: keys.playback))
        guard case .array(let parts) = reply, parts.count == 2, let held = parts[0].int else {
            throw RedisError(.protocolError, "unexpected lapse reply \(reply)")
        }
        if held == 1 { return .held }
        return .lapsed(seen: parts[1].string.flatMap { LeaseHolder.seen(in: $0, epoch: epoch) })
    }

    public func lapsedLeases(limit: Int, claimMs: Int64, marginMs: Int64) async throws -> [String] {
        let sweep = { (deadlines: String) in SweepScript(deadlines: deadlines, claimMs: claimMs, limit: limit, marginMs: marginMs) }
        guard clustered else {
            let reply = try await evaluate(sweep(RedisKeys.leaseDeadlines))
            return (reply.array ?? []).compactMap(\.string)
        }
        // Every bucket, side by side; a bucket whose master is failing over waits for the next sweep.
        let replies = (0..<RedisKeys.deadlineBuckets).map { bucket in
            evaluateFuture(sweep(RedisKeys.leaseDeadlines(bucket: bucket)))
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
        _ = try await evaluate(DeferSweepScript(deadlines: key, ms: ms, user: user))
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
            _ = try await evaluate(SettleScript(lock: keys.lock, deadlines: RedisKeys.leaseDeadlines, user: user))
            return
        }
        // The lock and the bucket are in different slots: the TTL read first, then the bucket moved.
        let ttl = try await redis.send(["PTTL", .string(keys.lock)]).int ?? -2
        if ttl > 0 {
            _ = try await evaluate(DeferSweepScript(deadlines: keys.deadlineBucket, ms: ttl, user: user))
        } else {
            _ = try await redis.send(["ZREM", .string(keys.deadlineBucket), .string(user)])
        }
    }

    public func restore(
        user: String, playback: Playback, holder: String?, ttlMs: Int64, frame: BusMessage?, replacing: Int64?
    ) async throws -> Bool {
        let keys = RedisKeys(user: user)
        if clustered, holder != nil { try await indexLease(user: user, ms: ttlMs).get() }
        let reply = try await evaluate(RestoreScript(
            playback: keys.playback, lock: keys.lock, deadlines: deadlines, version: playback.version, epoch: playback.epoch,
            state: ByteBuffer(bytes: PlaybackJSON.encode(playback)), holder: holder, ttlMs: ttlMs, channel: keys.channel,
            frame: frame?.encoded(), user: user, replacing: replacing))
        return reply.int == 1
    }

    public func takeRequestToken(user: String, rate: Int, burst: Int) async throws -> Int64? {
        let wait = try await evaluate(RequestTokenScript(bucket: RedisKeys(user: user).requestBucket, rate: rate, burst: burst)).int ?? 0
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
