import Foundation
import Logging
import Metrics
import NIOCore
import RedisClient
import Synchronization

/// The multi-node engine: Redis holds each user's playback, lease and devices, and is the bus
/// between daemons. A node serializes its own work per user (`RedisUser`), keeps the state of the
/// users it has devices of, runs each command on it and commits with one script call
/// (optimistic: a conflict reply carries the current state for the retry), and delivers changes
/// to its local devices from the user's pub/sub channel, in channel order, whichever node made them.
public final class RedisEngine: PlaybackEngine {
    public let nodeID: String
    let redis: RedisClient
    let subscriber: RedisSubscriber
    let registry: FanoutRegistry
    let configuration: EngineConfiguration
    let reducer: PlaybackReducer
    let clock: @Sendable () -> Int64
    let logger: Logger
    let commandScript = RedisScript(RedisScripts.command)
    let renewScript = RedisScript(RedisScripts.renew)
    let restoreScript = RedisScript(RedisScripts.restore)
    let joinScript = RedisScript(RedisScripts.join)
    let leaveScript = RedisScript(RedisScripts.leave)
    let presenceScript = RedisScript(RedisScripts.presence)
    let durability: Durability
    private let users = Mutex<[String: RedisUser]>([:])
    private let background = Mutex<[Task<Void, Never>]>([])

    /// The lease's TTL while its holder is connected (renewed every tick, so several renewals may
    /// fail before it lapses); a lease whose node died expires after it.
    var leaseTTLMs: Int64 { max(configuration.graceMs, 2_000) }
    /// How often leases are renewed, presence refreshed and dead leases swept.
    var tickMs: Int64 { max(50, min(1_000, leaseTTLMs / 4)) }
    /// How long a device stays online without a refresh; refreshed every third of it. A node that
    /// dies leaves its devices listed online (not active: that is the lease) for at most this long.
    var presenceTTLMs: Int64 { max(15_000, 3 * tickMs + 2_000) }
    /// Users kept up at once by the upkeep loop.
    static let upkeepConcurrency = 64
    /// Parts of a tick the users' upkeep is spread over.
    static let upkeepSlots = 10
    /// How often a local holder's lease is renewed: three times per TTL, so two renewals may fail.
    var renewMs: Int64 { leaseTTLMs / 3 }

    /// Keeps `users` up concurrently (their round trips overlap on the pipelined connection), a
    /// bounded number at a time; forgets the ones with no device here and nothing running.
    private func keepUp(_ all: [RedisUser]) async {
        await withTaskGroup(of: Void.self) { group in
            var next = 0
            func add(_ user: RedisUser) {
                group.addTask {
                    if self.registry.fanout(for: user.userID) != nil {
                        await user.maintain()
                    } else if user.isIdle {
                        // Recreated on demand.
                        self.users.withLock { users in if users[user.userID] === user { users[user.userID] = nil } }
                    }
                }
            }
            while next < min(Self.upkeepConcurrency, all.count) {
                add(all[next])
                next += 1
            }
            while await group.next() != nil, next < all.count {
                add(all[next])
                next += 1
            }
        }
    }

    public init(
        redis redisConfiguration: RedisConfiguration, catalog: any TrackCatalog = DemoCatalog.shared,
        configuration: EngineConfiguration = EngineConfiguration(), durability: Durability? = nil,
        clock: @escaping @Sendable () -> Int64 = ServerClock.nowMs, logger: Logger = Logger(label: "playback.engine.redis")
    ) {
        self.durability = durability ?? .none(logger: logger)
        let nodeID = "n-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        self.nodeID = nodeID
        var commands = redisConfiguration
        commands.clientName = "playback-syncd:\(nodeID)"
        var pubsub = redisConfiguration
        pubsub.clientName = "playback-syncd:\(nodeID):pubsub"
        let registry = FanoutRegistry(logger: logger)
        self.registry = registry
        self.redis = RedisClient(configuration: commands, logger: logger)
        self.subscriber = RedisSubscriber(
            configuration: pubsub, logger: logger, onResubscribed: { registry.resubscribed() },
            onMessage: { channel, payload in registry.route(channel: channel, payload: payload) })
        self.configuration = configuration
        self.reducer = PlaybackReducer(catalog: catalog, limits: configuration.limits)
        self.clock = clock
        var logger = logger
        logger[metadataKey: "node.id"] = .string(nodeID)
        self.logger = logger
        registry.engine = self
    }

    /// Starts the pub/sub connection and the lease/presence loop; returns once subscribed, or
    /// after a few seconds when Redis is unreachable (then `/readyz` says so until it connects).
    public func start() async {
        let subscriber = self.subscriber
        let loop = Task { [weak self] in
            var slot = 0
            while !Task.isCancelled {
                guard let self else { return }
                // Each user is kept up once per tick, in one of `upkeepSlots` slots spread over the
                // tick, so the renewals of thousands of users do not all land in one burst (which
                // showed as a spike of command latency once a second).
                let pause = max(1, tickMs / Int64(Self.upkeepSlots))
                let started = ContinuousClock.now
                let due = self.users.withLock { users in
                    users.values.filter { UInt(bitPattern: $0.userID.hashValue) % UInt(Self.upkeepSlots) == UInt(slot) }
                }
                await keepUp(due)
                let spent = ContinuousClock.now - started
                if spent > .milliseconds(pause) {
                    self.logger.warning("lease upkeep slower than its tick", metadata: [
                        "users": .stringConvertible(due.count),
                        "upkeep.ms": .stringConvertible(spent.components.seconds * 1_000 + spent.components.attoseconds / 1_000_000_000_000_000),
                    ])
                }
                slot = (slot + 1) % Self.upkeepSlots
                try? await Task.sleep(for: .milliseconds(pause))
            }
        }
        background.withLock { $0 = [Task { await subscriber.run() }, loop] }
        if await subscriber.waitUntilConnected(timeout: .seconds(5)) {
            logger.info("redis engine started", metadata: ["redis.host": .string(redis.configuration.host)])
        } else {
            logger.error("redis unreachable at start; serving and retrying", metadata: ["redis.host": .string(redis.configuration.host)])
        }
    }

    func user(_ id: String) -> RedisUser {
        users.withLock { users in
            if let user = users[id] { return user }
            let user = RedisUser(userID: id, engine: self)
            users[id] = user
            return user
        }
    }

    public func connect(user: UserIdentity, hello: ClientMessage.Hello, sink: any DeviceSink, welcome: WelcomeParameters) async throws(ConnectRefusal) {
        try await self.user(user.userID).connect(hello: hello, sink: sink, welcome: welcome)
        durability.sawDevice(user: user, device: hello.device, at: clock())
    }

    public func disconnect(user: UserIdentity, device: String, sessionID: String, kind: DisconnectKind) async {
        await self.user(user.userID).disconnect(device: device, sessionID: sessionID, kind: kind)
    }

    public func submit(_ submission: Submission, completion: @escaping @Sendable (Result<Receipt, PlaybackError>) -> Void) {
        var submission = submission
        if let country = durability.knownCountry(of: submission.user) {
            submission.user.country = country
            user(submission.user.userID).submit(submission, completion: completion)
            return
        }
        // The country is not cached: look it up first (once per user every few minutes).
        Task {
            submission.user.country = await durability.country(of: submission.user)
            user(submission.user.userID).submit(submission, completion: completion)
        }
    }

    public func recentlyPlayed(user: UserIdentity, limit: Int) async throws(PlaybackError) -> [PlayedItem] {
        try await durability.recentPlays(user: user.userID, limit: limit, catalog: reducer.catalog)
    }

    public func snapshot(user: UserIdentity) async throws(PlaybackError) -> (state: PlayerState, devices: [DeviceInfo]) {
        try await self.user(user.userID).snapshot()
    }

    public var catalog: any TrackCatalog { reducer.catalog }

    public func readiness() async -> Readiness {
        var checks = durability.check
        let ping = subscriber.isConnected ? try? await redis.send(["PING"]) : nil
        let up = ping == .simpleString("PONG")
        checks["redis"] = up ? "up" : (subscriber.isConnected ? "down" : "down (pub/sub disconnected)")
        return Readiness(ready: up, checks: checks)
    }

    public func shutdown() async {
        for task in background.withLock({ $0 }) { task.cancel() }
        // The users with devices here: their latest state goes to PostgreSQL now, not a second later.
        if durability.writer != nil {
            for user in users.withLock({ Array($0.values) }) { await user.writeSnapshot() }
        }
        await subscriber.stop()
        await redis.shutdown()
    }
}

/// Routes pub/sub messages to the users that have devices on this node.
final class FanoutRegistry: Sendable {
    private let fanouts = Mutex<[String: UserFanout]>([:])
    private let engineBox = Mutex<RedisEngine?>(nil)
    private let logger: Logger

    init(logger: Logger) { self.logger = logger }

    var engine: RedisEngine? {
        get { engineBox.withLock { $0 } }
        set { engineBox.withLock { $0 = newValue } }
    }

    func fanout(for user: String) -> UserFanout? { fanouts.withLock { $0[user] } }

    func fanoutCreating(for user: String) -> (fanout: UserFanout, created: Bool) {
        fanouts.withLock { fanouts in
            if let fanout = fanouts[user] { return (fanout, false) }
            let fanout = UserFanout()
            fanouts[user] = fanout
            return (fanout, true)
        }
    }

    /// Removes the user's fanout if no device is on it; true when removed.
    func removeIfEmpty(_ user: String) -> Bool {
        fanouts.withLock { fanouts in
            guard let fanout = fanouts[user], fanout.isEmpty else { return false }
            fanouts[user] = nil
            return true
        }
    }

    func route(channel: String, payload: ByteBuffer) {
        guard let user = RedisKeys.user(ofChannel: channel), let fanout = fanout(for: user) else { return }
        do {
            if let device = fanout.receive(try BusMessage(decoding: payload)), let engine {
                Task { await engine.user(user).regrant(device) }
            }
        } catch {
            logger.error("undecodable bus message", metadata: ["user.id": .string(user), "error": .string("\(error)")])
        }
    }

    /// After the pub/sub connection came back, messages may have been lost: every local user
    /// re-reads its state and sends it to its devices when it is newer than what they saw.
    func resubscribed() {
        guard let engine else { return }
        for user in fanouts.withLock({ Array($0.keys) }) {
            Task { await engine.user(user).recover() }
        }
    }
}
