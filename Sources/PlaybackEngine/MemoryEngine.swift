import Foundation
import Logging
import Metrics
import Synchronization

/// The embedded engine: every user's playback in this process, serialized per user by an
/// actor. No dependencies; with PostgreSQL configured (`Durability`) a user's playback is
/// restored from its snapshot when first needed after a restart, otherwise it is lost with the process.
public final class MemoryEngine: PlaybackEngine {
    private let configuration: EngineConfiguration
    private let reducer: PlaybackReducer
    private let clock: @Sendable () -> Int64
    private let logger: Logger
    private let durability: Durability
    private let users = Mutex<[String: UserPlayback]>([:])

    public init(
        catalog: any TrackCatalog = DemoCatalog.shared,
        configuration: EngineConfiguration = EngineConfiguration(),
        durability: Durability? = nil,
        clock: @escaping @Sendable () -> Int64 = ServerClock.nowMs,
        logger: Logger = Logger(label: "playback.engine.memory")
    ) {
        self.configuration = configuration
        self.reducer = PlaybackReducer(catalog: catalog, limits: configuration.limits)
        self.clock = clock
        self.logger = logger
        self.durability = durability ?? .none(logger: logger)
    }

    private func player(for user: UserIdentity) async -> UserPlayback {
        let player = users.withLock { users in
            if let existing = users[user.userID] { return existing }
            let created = UserPlayback(
                userID: user.userID, configuration: configuration, reducer: reducer, durability: durability, clock: clock,
                logger: logger)
            users[user.userID] = created
            return created
        }
        await player.loadIfNeeded()
        return player
    }

    public func connect(
        user: UserIdentity, hello: ClientMessage.Hello, sink: any DeviceSink, welcome: WelcomeParameters
    ) async throws(ConnectRefusal) {
        try await player(for: user).connect(hello: hello, sink: sink, welcome: welcome)
        durability.sawDevice(user: user, device: hello.device, at: clock())
    }

    public func disconnect(user: UserIdentity, device: String, sessionID: String, kind: DisconnectKind) async {
        await player(for: user).disconnect(device: device, sessionID: sessionID, kind: kind)
    }

    public func submit(_ submission: Submission, completion: @escaping @Sendable (Result<Receipt, PlaybackError>) -> Void) {
        Task {
            var submission = submission
            submission.user.country = await durability.country(of: submission.user)
            completion(await player(for: submission.user).submit(submission))
        }
    }

    public func snapshot(user: UserIdentity) async throws(PlaybackError) -> (state: PlayerState, devices: [DeviceInfo]) {
        await player(for: user).snapshot()
    }

    public func recentlyPlayed(user: UserIdentity, limit: Int) async throws(PlaybackError) -> [PlayedItem] {
        try await durability.recentPlays(user: user.userID, limit: limit, catalog: reducer.catalog)
    }

    public var catalog: any TrackCatalog { reducer.catalog }

    public func readiness() async -> Readiness { Readiness(ready: true, checks: durability.check) }

    public func shutdown() async {
        let all = users.withLock { Array($0.values) }
        for player in all { await player.cancelTimers() }
        for player in all { await player.writeSnapshot() }
    }
}

/// Server time in milliseconds since the Unix epoch.
public enum ServerClock {
    @Sendable public static func nowMs() -> Int64 {
        Int64((Date().timeIntervalSince1970 * 1_000).rounded(.down))
    }
}

/// One user's playback, devices and request log; the unit of serialization.
actor UserPlayback {
    let userID: String
    let configuration: EngineConfiguration
    let reducer: PlaybackReducer
    let clock: @Sendable () -> Int64
    let logger: Logger
    let durability: Durability
    var playback = Playback.initial
    /// Set once the playback was restored from PostgreSQL (or there was nothing to restore).
    private var loaded = false
    private var loading: Task<Void, Never>?
    var directory = DeviceDirectory()
    var local = LocalDevices()
    var requests: RequestLog
    var graceTimers: [String: Task<Void, Never>] = [:]
    var randomSource = SystemRandomNumberGenerator()

    init(
        userID: String, configuration: EngineConfiguration, reducer: PlaybackReducer, durability: Durability,
        clock: @escaping @Sendable () -> Int64, logger: Logger
    ) {
        self.userID = userID
        self.configuration = configuration
        self.reducer = reducer
        self.durability = durability
        self.clock = clock
        var logger = logger
        logger[metadataKey: "user.id"] = .string(userID)
        self.logger = logger
        self.requests = RequestLog(windowMs: configuration.idempotencyWindowMs, capacity: configuration.idempotencyCapacity)
    }

    /// Restores the playback from its snapshot the first time the user is needed.
    func loadIfNeeded() async {
        if loaded { return }
        if let loading { return await loading.value }
        let task = Task { await self.restore() }
        loading = task
        await task.value
    }

    private func restore() async {
        switch await durability.restore(user: userID, now: clock()) {
        case .fresh:
            break
        case .snapshot(let restored), .unknown(let restored):
            playback = restored
            durability.writer?.snapshot(user: userID, playback: restored, urgent: true)
            // Its device is not connected to this new process: it has the grace period to come back.
            if let active = playback.activeDevice { startGrace(for: active) }
        }
        loaded = true
        loading = nil
    }

    /// Queues the current playback for writing now (shutdown).
    func writeSnapshot() {
        guard loaded, playback.version > 0 else { return }
        durability.writer?.snapshot(user: userID, playback: playback, urgent: true)
    }

    func connect(hello: ClientMessage.Hello, sink: any DeviceSink, welcome: WelcomeParameters) throws(ConnectRefusal) {
        let now = clock()
        let device = hello.device.id
        if local.sink(for: device) == nil, directory.onlineCount >= configuration.maxDevicesPerUser {
            throw ConnectRefusal(code: .policyViolation, reason: "too many devices connected (at most \(configuration.maxDevicesPerUser))")
        }
        if let replaced = local.attach(sink, device: device) {
            replaced.close(.replaced, reason: "replaced by a newer connection of this device")
            logger.debug("device connection replaced", metadata: ["device.id": .string(device)])
        }
        graceTimers.removeValue(forKey: device)?.cancel()
        directory.prune(now: now, retentionMs: configuration.deviceRetentionMs)
        directory.markOnline(id: device, name: hello.device.name, kind: hello.device.kind, now: now)
        let devices = directory.list(activeDevice: playback.activeDevice)
        let changed = hello.lastSeen.map { $0.epoch != playback.epoch || $0.version != playback.version } ?? true
        sink.send(EncodedMessage(.welcome(.init(
            session: sink.sessionID, serverTime: now, heartbeatMs: welcome.heartbeatMs, limits: welcome.limits,
            devices: devices, state: playback.playerState(includeQueue: true), changed: changed))))
        local.broadcast(EncodedMessage(.devices(devices)), except: device)
    }

    func disconnect(device: String, sessionID: String, kind: DisconnectKind) {
        guard local.detach(device: device, sessionID: sessionID) else { return }
        directory.markOffline(id: device, now: clock())
        if let record = directory.records[device] {
            durability.deviceSeen(user: userID, id: device, name: record.name, kind: record.kind, at: record.lastSeen)
        }
        if device == playback.activeDevice {
            switch kind {
            case .released:
                _ = apply(.release, sender: device, cause: .init(op: "released", device: device, request: nil))
            case .lost:
                startGrace(for: device)
            case .replaced:
                break
            }
        }
        broadcastDevices()
    }

    func submit(_ submission: Submission) -> Result<Receipt, PlaybackError> {
        let now = clock()
        let remembered = submission.rememberedRequestID
        if let id = remembered, let answer = requests.answer(for: id, now: now) { return answer }
        let cause = ServerMessage.Cause(op: submission.input.causeOp, device: submission.device, request: submission.requestID)
        let result = apply(
            submission.input, sender: submission.device, country: submission.user.country,
            ifVersion: submission.ifVersion, cause: cause)
        if let id = remembered { requests.record(result, for: id, now: now) }
        return result
    }

    func snapshot() -> (state: PlayerState, devices: [DeviceInfo]) {
        (playback.playerState(includeQueue: true), directory.list(activeDevice: playback.activeDevice))
    }

    func cancelTimers() {
        for timer in graceTimers.values { timer.cancel() }
        graceTimers.removeAll()
    }

    private func apply(
        _ input: Input, sender: String?, country: String? = nil, ifVersion: Int64? = nil, cause: ServerMessage.Cause
    ) -> Result<Receipt, PlaybackError> {
        let environment = ReducerEnvironment(
            now: clock(), sender: sender, country: country, devices: directory.presence, randomSeed: randomSource.next())
        let transition: Transition
        do {
            transition = try reducer.apply(input, to: playback, environment: environment, ifVersion: ifVersion)
        } catch {
            return .failure(error)
        }
        if transition.changed {
            playback = transition.playback
            local.deliver(PlaybackEvent(transition, cause: cause).prepared)
            durability.committed(user: userID, transition: transition) { [directory] in directory.records[$0]?.kind.rawValue }
            if let lease = transition.lease {
                Counter(label: "playback_lease_changes_total", dimensions: [("reason", lease.reason.rawValue)]).increment()
                logger.info("lease moved", metadata: [
                    "lease.epoch": .stringConvertible(lease.epoch), "lease.reason": .string(lease.reason.rawValue),
                    "lease.from": .string(lease.revoked ?? "-"), "lease.to": .string(lease.granted ?? "-"),
                ])
                broadcastDevices()
            }
        }
        return .success(Receipt(version: transition.playback.version, entry: transition.entry, changed: transition.changed))
    }

    private func broadcastDevices() {
        guard !local.isEmpty else { return }
        local.broadcast(EncodedMessage(.devices(directory.list(activeDevice: playback.activeDevice))))
    }

    private func startGrace(for device: String) {
        graceTimers[device]?.cancel()
        let graceMs = configuration.graceMs
        graceTimers[device] = Task { [weak self] in
            do { try await Task.sleep(for: .milliseconds(graceMs)) } catch { return }
            await self?.graceEnded(for: device)
        }
    }

    private func graceEnded(for device: String) {
        graceTimers[device] = nil
        guard !directory.isOnline(device), device == playback.activeDevice else { return }
        logger.info("lease expired after grace", metadata: ["device.id": .string(device)])
        _ = apply(.expire(device: device), sender: nil, cause: .init(op: "expired", device: device, request: nil))
    }
}
