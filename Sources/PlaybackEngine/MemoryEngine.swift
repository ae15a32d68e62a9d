import Foundation
import Logging
import Metrics
import Synchronization

/// The embedded engine: every user's playback in this process, serialized per user by an
/// actor. No dependencies; state is lost when the process exits.
public final class MemoryEngine: PlaybackEngine {
    private let configuration: EngineConfiguration
    private let reducer: PlaybackReducer
    private let clock: @Sendable () -> Int64
    private let logger: Logger
    private let users = Mutex<[String: UserPlayback]>([:])

    public init(
        catalog: any TrackCatalog = DemoCatalog.shared,
        configuration: EngineConfiguration = EngineConfiguration(),
        clock: @escaping @Sendable () -> Int64 = ServerClock.nowMs,
        logger: Logger = Logger(label: "playback.engine.memory")
    ) {
        self.configuration = configuration
        self.reducer = PlaybackReducer(catalog: catalog, limits: configuration.limits)
        self.clock = clock
        self.logger = logger
    }

    private func player(for user: UserIdentity) -> UserPlayback {
        users.withLock { users in
            if let existing = users[user.userID] { return existing }
            let created = UserPlayback(
                userID: user.userID, configuration: configuration, reducer: reducer, clock: clock, logger: logger)
            users[user.userID] = created
            return created
        }
    }

    public func connect(
        user: UserIdentity, hello: ClientMessage.Hello, sink: any DeviceSink, welcome: WelcomeParameters
    ) async throws(ConnectRefusal) {
        try await player(for: user).connect(hello: hello, sink: sink, welcome: welcome)
    }

    public func disconnect(user: UserIdentity, device: String, sessionID: String, kind: DisconnectKind) async {
        await player(for: user).disconnect(device: device, sessionID: sessionID, kind: kind)
    }

    public func submit(_ submission: Submission) async -> Result<Receipt, PlaybackError> {
        await player(for: submission.user).submit(submission)
    }

    public func snapshot(user: UserIdentity) async throws(PlaybackError) -> (state: PlayerState, devices: [DeviceInfo]) {
        await player(for: user).snapshot()
    }

    public var catalog: any TrackCatalog { reducer.catalog }

    public func isReady() async -> Bool { true }

    public func shutdown() async {
        let all = users.withLock { Array($0.values) }
        for player in all { await player.cancelTimers() }
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
    var playback = Playback.initial
    var directory = DeviceDirectory()
    var local = LocalDevices()
    var requests: RequestLog
    var graceTimers: [String: Task<Void, Never>] = [:]
    var randomSource = SystemRandomNumberGenerator()

    init(userID: String, configuration: EngineConfiguration, reducer: PlaybackReducer, clock: @escaping @Sendable () -> Int64, logger: Logger) {
        self.userID = userID
        self.configuration = configuration
        self.reducer = reducer
        self.clock = clock
        var logger = logger
        logger[metadataKey: "user.id"] = .string(userID)
        self.logger = logger
        self.requests = RequestLog(windowMs: configuration.idempotencyWindowMs, capacity: configuration.idempotencyCapacity)
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
            local.deliver(PlaybackEvent(transition, cause: cause))
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
