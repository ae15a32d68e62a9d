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
    /// The users, each on its event loop.
    private let users = UserShards<Storage>(bucketCount: upkeepSlots)
    /// Jobs that need a task (see `perform`), run by `run()`.
    private let work = BackgroundWork()
    private let lifecycle = Mutex(Lifecycle())
    /// Finished by `beginShutdown()`: `run()` then stops its loops.
    private let stopping = AsyncStream.makeStream(of: Never.self)

    private struct Lifecycle {
        var running = false
        /// `finish()` has begun, and has ended.
        var finishing = false
        var finished = false
        /// Callers of `shutdown()` waiting for `run()` to finish.
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

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
        self.environment = UserEnvironment(
            storage: storage, configuration: configuration, timing: LeaseTiming(graceMs: configuration.graceMs),
            reducer: PlaybackReducer(catalog: catalog, limits: configuration.limits), durability: durability ?? .none(logger: logger),
            clock: clock, logger: logger, nodeID: nodeID, work: work)
        storage.attach(
            onFrame: { [weak self] user, frame in self?.route(frame, to: user) },
            onResubscribed: { [weak self] users in self?.resubscribed(users) })
        if configuration.idleTTLMs > 0, let writer = durability?.writer {
            // Once PostgreSQL holds a snapshot, its user may leave Redis if nobody uses it.
            writer.onSnapshotsWritten { [weak self] snapshots in
                for snapshot in snapshots { self?.expireIfIdle(user: snapshot.userID, version: snapshot.version) }
            }
        }
    }

    /// Lets `user` leave the storage after the idle TTL if it is idle at `version` (`IdleScript`).
    func expireIfIdle(user: String, version: Int64) {
        let storage = self.storage
        let ttl = environment.configuration.idleTTLMs
        perform {
            if (try? await storage.expireIfIdle(user: user, version: version, ttlMs: ttl)) == true {
                Counter(label: "playback_idle_expiries_total").increment()
            }
        }
    }

    /// Waits until the storage's bus is up (`run()` connects it), at most a few seconds; then
    /// `/readyz` says whether it is.
    @discardableResult
    public func waitUntilReady(timeout: Duration = .seconds(5)) async -> Bool {
        await storage.waitUntilReady(timeout: timeout)
    }

    /// The bus, the lease upkeep, the sweep of lapsed leases and the jobs of `perform`, until
    /// `beginShutdown()` (or cancellation); then the jobs in hand complete, the connected users'
    /// states go to PostgreSQL, and the storage closes.
    public func run() async {
        guard lifecycle.withLock({ state in
            defer { state.running = true }
            return !state.running && !state.finishing
        }) else { return }
        await withDiscardingTaskGroup { group in
            group.addTask { await self.work.run() }
            group.addTask {
                await withDiscardingTaskGroup { loops in
                    loops.addTask { await self.storage.run() }
                    loops.addTask { await self.keepUp() }
                    // Apart, so that a long sweep (many leases lapsing at once) never delays the renewals.
                    loops.addTask { await self.sweep() }
                    // Apart too: a node whose upkeep runs late is still alive, and its holders its own.
                    loops.addTask { await self.markAlive() }
                    for await _ in self.stopping.stream {}
                    loops.cancelAll()
                }
                self.work.finish()
            }
        }
        await finish()
    }

    @discardableResult
    public func perform(_ job: @escaping @Sendable () async -> Void) -> Bool {
        guard work.submit(job) else {
            environment.logger.debug("work dropped: the engine is shutting down")
            Counter(label: "playback_work_dropped_total").increment()
            return false
        }
        return true
    }

    public func beginShutdown() {
        stopping.continuation.finish()
    }

    public func shutdown() async {
        beginShutdown()
        if !lifecycle.withLock({ $0.running }) {
            // Never ran: nothing else will finish.
            work.finish()
            await finish()
        }
        await withCheckedContinuation { continuation in
            let done = lifecycle.withLock { state -> Bool in
                if state.finished { return true }
                state.waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Once: the connected users' states to PostgreSQL now, not a second later; the storage closed.
    private func finish() async {
        let first = lifecycle.withLock { state in
            defer { state.finishing = true }
            return !state.finishing
        }
        guard first else { return }
        if durability.writer != nil {
            for shard in users.shards {
                for user in await shard.onLoop({ shard.all }) { await user.writeSnapshot() }
            }
        }
        await storage.shutdown()
        for waiter in lifecycle.withLock({ state in
            state.finished = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }) { waiter.resume() }
    }

    private var durability: Durability { environment.durability }

    /// The user, made when there is none; on its loop, at once when called there.
    func withUser(_ id: String, _ body: @escaping @Sendable (isolated UserPlayback<Storage>) -> Void) {
        let shard = users.shard(of: id)
        if shard.loop.inEventLoop {
            user(id, on: shard).assumeIsolated(body)
        } else {
            shard.loop.execute { self.user(id, on: shard).assumeIsolated(body) }
        }
    }

    /// Runs `body` on the user (made when there is none), which the upkeep does not forget while
    /// `body` runs (it would otherwise see a user with no device and nothing in its gate between
    /// the lookup and `body`'s first step, and a second one could be made meanwhile).
    func visit<T: Sendable, E: Error>(_ id: String, _ body: (UserPlayback<Storage>) async throws(E) -> T) async throws(E) -> T {
        let shard = users.shard(of: id)
        let user = await shard.onLoop {
            let user = self.user(id, on: shard)
            user.assumeIsolated { $0.visitors += 1 }
            return user
        }
        defer { user.onLoop { $0.visitors -= 1 } }
        return try await body(user)
    }

    private func user(_ id: String, on shard: UserShard<Storage>) -> UserPlayback<Storage> {
        shard.user(id, bucket: users.bucket(of: id)) { UserPlayback(userID: id, environment: environment, shard: shard) }
    }

    public func connect(user: UserIdentity, hello: ClientMessage.Hello, sink: any DeviceSink, welcome: WelcomeParameters) async throws(ConnectRefusal) {
        // Shedding load: a device told when to come back (1013 with a hint) adds no work now.
        if let shed = shedding() {
            throw ConnectRefusal(
                code: .tryAgainLater, reason: Reconnecting.closeReason(shed.message, retryAfterMs: jittered(shed.retryAfterMs ?? 1_000)))
        }
        try await visit(user.userID) { (playback) async throws(ConnectRefusal) in try await playback.connect(hello: hello, sink: sink, welcome: welcome) }
        if !hello.isRemote { durability.sawDevice(user: user, device: hello.device, at: environment.clock()) }
    }

    public func disconnect(user: UserIdentity, device: String, sessionID: String, kind: DisconnectKind) async {
        await visit(user.userID) { await $0.disconnect(device: device, sessionID: sessionID, kind: kind) }
    }

    public func submit(_ submission: Submission, completion: @escaping @Sendable (Result<Receipt, PlaybackError>) -> Void) {
        if let shed = shedding() {
            completion(.failure(shed))
            return
        }
        withUser(submission.user.userID) { $0.submitHere(submission, completion: completion) }
    }

    /// A retry hint spread between itself and twice itself, so that the devices refused together
    /// do not all come back together.
    private func jittered(_ ms: Int64) -> Int64 { ms + Int64.random(in: 0...max(ms, 1)) }

    /// The refusal for a new command while the bus lags past `maxBusLagMs`, if it does: committing
    /// more would only make the devices fall further behind (and Redis close the subscription).
    private func shedding() -> PlaybackError? {
        let limit = environment.configuration.maxBusLagMs
        guard limit > 0, case let lag = storage.busLagMs, lag > limit else { return nil }
        Counter(label: "playback_commands_shed_total").increment()
        return PlaybackError(.unavailable, "the server is overloaded; try again", retryAfterMs: min(max(lag, 100), 5_000))
    }

    public func snapshot(user: UserIdentity) async throws(PlaybackError) -> (state: PlayerState, devices: [DeviceInfo]) {
        try await visit(user.userID) { (playback) async throws(PlaybackError) in try await playback.snapshot() }
    }

    public func recentlyPlayed(user: UserIdentity, limit: Int) async throws(PlaybackError) -> [PlayedItem] {
        try await durability.recentPlays(user: user.userID, limit: limit, catalog: environment.reducer.catalog)
    }

    public var catalog: any TrackCatalog { environment.reducer.catalog }

    public func admitRequest(user: UserIdentity, rate: Int, burst: Int) async -> Int64? {
        do {
            return try await storage.takeRequestToken(user: user.userID, rate: rate, burst: burst)
        } catch {
            environment.logger.debug("shared request budget unavailable", metadata: ["error": .string("\(error)")])
            return nil
        }
    }

    public func readiness() async -> Readiness {
        let (ready, storageChecks) = await storage.readiness()
        return Readiness(ready: ready, checks: durability.check.merging(storageChecks) { $1 })
    }

    // MARK: The bus

    /// A frame from the user's channel, for the local devices.
    private func route(_ frame: BusMessage, to id: String) {
        let shard = users.shard(of: id)
        let bucket = users.bucket(of: id)
        let deliver: @Sendable () -> Void = {
            // Each daemon's delivery joins the committing command's trace.
            let span = frame.traceParent.flatMap { traceParent in
                CommandTracing.isEnabled
                    ? CommandTracing.span("deliver", under: CommandTracing.context(traceParent: traceParent), kind: .consumer) : nil
            }
            span?.attributes["playback.user"] = id
            defer { span?.end() }
            guard let user = shard.existing(id, bucket: bucket),
                let device = user.assumeIsolated({ $0.fanout?.receive(frame) })
            else { return }
            // A local holder that missed its grant while the bus was down.
            self.perform { await user.regrant(device) }
        }
        if shard.loop.inEventLoop { deliver() } else { shard.loop.execute(deliver) }
    }

    /// The bus may have lost frames of these users (nil: of all, after it reconnected): each of them
    /// with devices here re-reads its state and sends it to them when it is newer than what they saw.
    private func resubscribed(_ ids: [String]?) {
        let wanted = ids.map(Set.init)
        for shard in users.shards {
            shard.loop.execute {
                for user in shard.all where wanted?.contains(user.userID) ?? true && user.assumeIsolated({ $0.fanout != nil }) {
                    self.perform { await user.recover() }
                }
            }
        }
    }

    // MARK: Upkeep

    /// Each user once per tick, in one of `upkeepSlots` slots spread over the tick.
    private func keepUp() async {
        var slot = 0
        while !Task.isCancelled {
            let pause = max(1, environment.timing.tickMs / Int64(Self.upkeepSlots))
            let started = ContinuousClock.now
            var due: [UserPlayback<Storage>] = []
            for shard in users.shards { due += await shard.onLoop { [slot] in shard.users(in: slot) } }
            busLagGauge.record(Double(storage.busLagMs) / 1_000)
            await keepUp(due)
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

    /// Says this node is alive, twice per tick, until cancelled.
    private func markAlive() async {
        while !Task.isCancelled {
            try? await storage.markAlive(node: nodeID, ttlMs: environment.timing.nodeTTLMs)
            try? await Task.sleep(for: .milliseconds(max(25, environment.timing.tickMs / 2)))
        }
    }

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
            due = try await storage.lapsedLeases(limit: Self.sweepBatch, claimMs: Self.sweepClaimMs, marginMs: environment.timing.sweepMarginMs)
        } catch {
            environment.logger.debug("lease sweep failed", metadata: ["error": .string("\(error)")])
            return
        }
        guard !due.isEmpty else { return }
        Counter(label: "playback_lease_sweeps_total").increment(by: due.count)
        await withTaskGroup(of: Void.self) { group in
            for user in due { group.addTask { await self.visit(user) { await $0.sweep() } } }
        }
    }

    /// Keeps `users` up concurrently (their round trips overlap on the pipelined connection), a
    /// bounded number at a time; forgets the ones with no device here and nothing running.
    private func keepUp(_ all: [UserPlayback<Storage>]) async {
        await withTaskGroup(of: Void.self) { group in
            var next = 0
            func add(_ user: UserPlayback<Storage>) {
                group.addTask {
                    guard await user.maintain() else {
                        // No device here: forgotten when nothing runs either (made again on demand).
                        let shard = self.users.shard(of: user.userID)
                        let bucket = self.users.bucket(of: user.userID)
                        shard.loop.execute { shard.forgetIfUnused(user, bucket: bucket) }
                        return
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

/// How far behind a node's reading of the bus is (`PlaybackStorage.busLagMs`), each upkeep slot.
private let busLagGauge = Gauge(label: "playback_bus_lag_seconds")

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
        // One process holds every snapshot there is: a restore has nothing newer to wait for.
        var configuration = configuration
        configuration.restoreSettleMs = 0
        self.init(
            storage: MemoryStorage(configuration: configuration, clock: clock), nodeID: "memory", catalog: catalog,
            configuration: configuration, durability: durability, clock: clock, logger: logger)
    }
}
