import Logging
import Metrics
import NIOCore
import Synchronization

/// The engine: users' playback served by `UserPlayback` over a storage. `MemoryEngine` is it on
/// `MemoryStorage` (one process, nothing else to run), `RedisEngine` on `RedisStorage` (several
/// daemons sharing one Redis). Everything a session sees is the same code for both.
public final class StorageEngine<Storage: PlaybackStorage>: PlaybackEngine {
    /// This daemon among the ones sharing the storage (in logs and in Redis's client names).
    public let nodeID: String
    let storage: Storage
    private let environment: UserEnvironment<Storage>
    /// The users, in `upkeepSlots` buckets by their id's hash: each upkeep slot takes one bucket
    /// (filtering all users every slot cost more than the upkeep itself at 19,000 idle connections).
    private let users = Mutex<[[String: UserPlayback<Storage>]]>(Array(repeating: [:], count: upkeepSlots))
    /// The upkeep loop and the sweep loop, cancelled on shutdown.
    private let upkeep = Mutex<(started: Bool, tasks: [Task<Void, Never>])>((false, []))

    /// Users kept up at once by the upkeep loop.
    static var upkeepConcurrency: Int { 64 }
    /// Parts of a tick the users' upkeep is spread over, so that the renewals of thousands of
    /// users do not all land in one burst (which showed as a spike of command latency once a second).
    static var upkeepSlots: Int { 10 }

    init(
        storage: Storage, nodeID: String, catalog: any TrackCatalog, configuration: EngineConfiguration, durability: Durability?,
        clock: @escaping @Sendable () -> Int64, logger: Logger
    ) {
        var logger = logger
        logger[metadataKey: "node.id"] = .string(nodeID)
        self.nodeID = nodeID
        self.storage = storage
        let fanouts = FanoutRegistry()
        self.environment = UserEnvironment(
            storage: storage, fanouts: fanouts, configuration: configuration, timing: LeaseTiming(graceMs: configuration.graceMs),
            reducer: PlaybackReducer(catalog: catalog, limits: configuration.limits), durability: durability ?? .none(logger: logger),
            clock: clock, logger: logger, nodeID: nodeID)
    }

    /// Connects the storage's bus and starts the lease upkeep; returns once the bus is up, or
    /// after a few seconds without it (then `/readyz` says so until it is).
    public func start() async {
        guard upkeep.withLock({ state in
            defer { state.started = true }
            return !state.started
        }) else { return }
        await storage.start(
            onFrame: { [weak self] user, frame in self?.route(frame, to: user) },
            onResubscribed: { [weak self] in self?.resubscribed() })
        // Apart, so that a long sweep (many leases lapsing at once) never delays the renewals.
        let loops = [
            Task { [weak self] () async -> Void in await self?.keepUp() },
            Task { [weak self] () async -> Void in await self?.sweep() },
        ]
        upkeep.withLock { $0.tasks = loops }
    }

    private var durability: Durability { environment.durability }

    func user(_ id: String) -> UserPlayback<Storage> {
        let bucket = Self.bucket(of: id)
        return users.withLock { users in
            if let user = users[bucket][id] { return user }
            let user = UserPlayback(userID: id, environment: environment)
            users[bucket][id] = user
            return user
        }
    }

    private static func bucket(of user: String) -> Int { Int(UInt(bitPattern: user.hashValue) % UInt(upkeepSlots)) }

    public func connect(user: UserIdentity, hello: ClientMessage.Hello, sink: any DeviceSink, welcome: WelcomeParameters) async throws(ConnectRefusal) {
        await start()
        try await self.user(user.userID).connect(hello: hello, sink: sink, welcome: welcome)
        durability.sawDevice(user: user, device: hello.device, at: environment.clock())
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

    public func snapshot(user: UserIdentity) async throws(PlaybackError) -> (state: PlayerState, devices: [DeviceInfo]) {
        try await self.user(user.userID).snapshot()
    }

    public func recentlyPlayed(user: UserIdentity, limit: Int) async throws(PlaybackError) -> [PlayedItem] {
        try await durability.recentPlays(user: user.userID, limit: limit, catalog: environment.reducer.catalog)
    }

    public var catalog: any TrackCatalog { environment.reducer.catalog }

    public func readiness() async -> Readiness {
        let (ready, storageChecks) = await storage.readiness()
        return Readiness(ready: ready, checks: durability.check.merging(storageChecks) { $1 })
    }

    public func shutdown() async {
        for task in upkeep.withLock({ $0.tasks }) { task.cancel() }
        // The users with devices here: their latest state goes to PostgreSQL now, not a second later.
        if durability.writer != nil {
            for user in users.withLock({ $0.flatMap(\.values) }) { await user.writeSnapshot() }
        }
        await storage.shutdown()
    }

    // MARK: The bus

    /// A frame from the user's channel, for the local devices.
    private func route(_ frame: BusMessage, to user: String) {
        guard let fanout = environment.fanouts.fanout(for: user), let device = fanout.receive(frame) else { return }
        // A local holder that missed its grant while the bus was down.
        Task { await self.user(user).regrant(device) }
    }

    /// After the bus came back, frames may have been lost: every local user re-reads its state and
    /// sends it to its devices when it is newer than what they saw.
    private func resubscribed() {
        for user in environment.fanouts.users {
            Task { await self.user(user).recover() }
        }
    }

    // MARK: Upkeep

    /// Each user once per tick, in one of `upkeepSlots` slots spread over the tick.
    private func keepUp() async {
        var slot = 0
        while !Task.isCancelled {
            let pause = max(1, environment.timing.tickMs / Int64(Self.upkeepSlots))
            let started = ContinuousClock.now
            let due = users.withLock { Array($0[slot].values) }
            await keepUp(due)
            if slot % (Self.upkeepSlots / 2) == 0 {
                try? await storage.markAlive(node: nodeID, ttlMs: environment.timing.nodeTTLMs)
            }
            let spent = ContinuousClock.now - started
            if spent > .milliseconds(pause) {
                environment.logger.warning("lease upkeep slower than its tick", metadata: [
                    "users": .stringConvertible(due.count),
                    "upkeep.ms": .stringConvertible(spent.components.seconds * 1_000 + spent.components.attoseconds / 1_000_000_000_000_000),
                ])
            }
            slot = (slot + 1) % Self.upkeepSlots
            try? await Task.sleep(for: .milliseconds(pause))
        }
    }

    /// Users whose leases a sweep takes at once, and how long a node's claim on one keeps the
    /// other nodes off it (another node takes over if this one dies mid-sweep).
    static var sweepBatch: Int { 256 }
    static var sweepClaimMs: Int64 { 5_000 }

    /// Twice per tick, until cancelled.
    private func sweep() async {
        while !Task.isCancelled {
            await sweepLapsedLeases()
            try? await Task.sleep(for: .milliseconds(max(25, environment.timing.tickMs / 2)))
        }
    }

    /// Expires the leases that lapsed, wherever their devices were (their node may be dead): every
    /// node sweeps twice per tick, and the storage lets one node claim each lease.
    private func sweepLapsedLeases() async {
        let due: [String]
        do {
            due = try await storage.lapsedLeases(limit: Self.sweepBatch, claimMs: Self.sweepClaimMs)
        } catch {
            environment.logger.debug("lease sweep failed", metadata: ["error": .string("\(error)")])
            return
        }
        guard !due.isEmpty else { return }
        Counter(label: "playback_lease_sweeps_total").increment(by: due.count)
        await withTaskGroup(of: Void.self) { group in
            for user in due { group.addTask { await self.user(user).sweep() } }
        }
    }

    /// Keeps `users` up concurrently (their round trips overlap on the pipelined connection), a
    /// bounded number at a time; forgets the ones with no device here and nothing running.
    private func keepUp(_ all: [UserPlayback<Storage>]) async {
        await withTaskGroup(of: Void.self) { group in
            var next = 0
            func add(_ user: UserPlayback<Storage>) {
                group.addTask {
                    if self.environment.fanouts.fanout(for: user.userID) != nil {
                        await user.maintain()
                    } else if user.isIdle {
                        // Recreated on demand.
                        let bucket = Self.bucket(of: user.userID)
                        self.users.withLock { users in if users[bucket][user.userID] === user { users[bucket][user.userID] = nil } }
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
}

/// The embedded engine: everything in this process (`MemoryStorage`). With PostgreSQL configured
/// (`Durability`) a user's playback is restored from its snapshot when first needed after a
/// restart; otherwise it is lost with the process.
public typealias MemoryEngine = StorageEngine<MemoryStorage>

extension StorageEngine where Storage == MemoryStorage {
    public convenience init(
        catalog: any TrackCatalog = DemoCatalog.shared, configuration: EngineConfiguration = EngineConfiguration(),
        durability: Durability? = nil, clock: @escaping @Sendable () -> Int64 = ServerClock.nowMs,
        logger: Logger = Logger(label: "playback.engine.memory")
    ) {
        self.init(
            storage: MemoryStorage(configuration: configuration, clock: clock), nodeID: "memory", catalog: catalog,
            configuration: configuration, durability: durability, clock: clock, logger: logger)
    }
}
