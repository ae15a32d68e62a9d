import Foundation
import Logging
import Metrics
import NIOCore

/// What every user's playback on this node shares: the storage, the local devices, the rules.
struct UserEnvironment<Storage: PlaybackStorage>: Sendable {
    let storage: Storage
    let fanouts: FanoutRegistry
    let configuration: EngineConfiguration
    let timing: LeaseTiming
    let reducer: PlaybackReducer
    let durability: Durability
    let clock: @Sendable () -> Int64
    let logger: Logger
    let nodeID: String
    /// Where work that needs a task runs (owned by the engine's `run()`).
    let work: BackgroundWork
}

/// The lease's clock: how long it lives, how often it is renewed and checked, how long presence lasts.
struct LeaseTiming: Sendable {
    /// How long an active device that vanished keeps the lease.
    let graceMs: Int64
    /// The lease's TTL while its holder is connected (renewed three times per TTL, so two
    /// renewals may fail before it lapses); a lease whose node died expires after it.
    var leaseTTLMs: Int64 { max(graceMs, 2_000) }
    /// How often a local holder's lease is renewed.
    var renewMs: Int64 { leaseTTLMs / 3 }
    /// How often each user is kept up: lapsed leases expired, presence refreshed.
    var tickMs: Int64 { max(50, min(1_000, leaseTTLMs / 4)) }
    /// How long a device stays online without a refresh; refreshed every third of it. A node that
    /// dies leaves its devices listed online (not active: that is the lease) for at most this long.
    var presenceTTLMs: Int64 { max(15_000, 3 * tickMs + 2_000) }
    /// How long a node counts as alive after it last said so (twice per tick): as long as a lease
    /// it renews, so that a node starved for a while is not taken for dead before its leases
    /// would lapse anyway. A lease whose holder is connected to a live node is that node's to take
    /// back, not to expire.
    var nodeTTLMs: Int64 { max(leaseTTLMs, 2 * tickMs + 500) }
    /// How long past its deadline a lease waits for the sweep (half a tick): its own node, if only late, takes
    /// it back first.
    var sweepMarginMs: Int64 { tickMs / 2 }
}

/// One user's playback as this node serves it, the same for both engines: connects and the
/// welcome, disconnects and what they do to the lease, commands through the reducer, delivery
/// to the local devices, the lease's upkeep, the durability hooks. Its work is serialized by a
/// `UserGate`; what it stores goes through a `PlaybackStorage`.
///
/// A command costs one storage call in the common case: the reducer runs on the state this node
/// keeps while it has devices of the user (`UserFanout`'s cache), and `PlaybackStorage.command`
/// answers a remembered request id, checks the version, and commits or confirms in one go. A
/// conflict reply carries the current state, so the retry needs no read. Commands run without a
/// task: the storage's callback finishes them and starts the next job.
final class UserPlayback<Storage: PlaybackStorage>: Sendable {
    let userID: String
    private let environment: UserEnvironment<Storage>
    private let logger: Logger
    private static var maxAttempts: Int { 8 }
    private let gate = UserGate()

    private let lease: LeaseKeeper<Storage>
    private let presence: UserPresence<Storage>

    /// Nothing running or waiting.
    var isIdle: Bool { gate.isIdle }

    init(userID: String, environment: UserEnvironment<Storage>) {
        self.userID = userID
        self.environment = environment
        var logger = environment.logger
        logger[metadataKey: "user.id"] = .string(userID)
        self.logger = logger
        lease = LeaseKeeper(user: userID, storage: environment.storage, timing: environment.timing)
        presence = UserPresence(user: userID, storage: environment.storage, timing: environment.timing, nodeID: environment.nodeID)
    }

    private var storage: Storage { environment.storage }
    private var configuration: EngineConfiguration { environment.configuration }
    private var timing: LeaseTiming { environment.timing }
    private var now: Int64 { environment.clock() }
    private var fanout: UserFanout? { environment.fanouts.fanout(for: userID) }

    // MARK: Connections

    func connect(hello: ClientMessage.Hello, sink: any DeviceSink, welcome: WelcomeParameters) async throws(ConnectRefusal) {
        let outcome: Result<Void, ConnectRefusal> = await gate.run {
            do throws(ConnectRefusal) {
                try await connectNow(hello: hello, sink: sink, welcome: welcome)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try outcome.get()
    }

    private func connectNow(hello: ClientMessage.Hello, sink: any DeviceSink, welcome: WelcomeParameters) async throws(ConnectRefusal) {
        let device = hello.device.id
        let (fanout, created) = environment.fanouts.fanoutCreating(for: userID)
        do {
            if created { try await storage.subscribe(user: userID) }
            if let replaced = fanout.beginWelcome(sink, device: device) {
                replaced.close(.replaced, reason: "replaced by a newer connection of this device")
            }
            if let lastSeen = hello.lastSeen {
                // What the device saw was handed out: a restore must start above it.
                environment.fanouts.marks.raise(userID, epoch: lastSeen.epoch, version: lastSeen.version, at: now)
            }
            // The cache is loaded once while this node is subscribed; later devices are welcomed from it.
            let (playback, before) = try await cachedOrLoaded(fanout)
            let now = self.now
            let cap = configuration.maxDevicesPerUser
            var directory = before
            directory.markOnline(id: device, name: hello.device.name, kind: hello.device.kind, capabilities: hello.knownCapabilities, now: now)
            directory.prune(now: now, retentionMs: configuration.deviceRetentionMs, cap: cap)
            let devices = directory.list(for: playback)
            // The cap as this node sees it, then as the storage does (atomically, across nodes).
            guard before.isOnline(device) || before.onlineCount < cap,
                try await storage.join(
                    user: userID, device: device, entry: presence.entry(of: hello, session: sink.sessionID, now: now),
                    presenceUntil: presence.presenceUntil(now: now), cap: cap,
                    frame: BusMessage(devices: devices, except: device, replace: .init(device: device, session: sink.sessionID)))
            else {
                _ = fanout.detach(device: device, sessionID: sink.sessionID)
                await unsubscribeIfUnused()
                throw ConnectRefusal(code: .policyViolation, reason: "too many devices connected (at most \(cap))")
            }
            presence.connected(hello)
            fanout.remember(directory: directory)
            if playback.activeDevice == device {
                // Back within the grace period (or moved nodes): this node holds the lease now.
                try await lease.take(for: playback, now: now)
            }
            let changed = hello.lastSeen.map { $0.epoch != playback.epoch || $0.version != playback.version } ?? true
            let message = EncodedMessage(.welcome(.init(
                session: sink.sessionID, serverTime: now, heartbeatMs: welcome.heartbeatMs, limits: welcome.limits,
                devices: devices, state: playback.playerState(includeQueue: true), changed: changed)))
            fanout.finishWelcome(
                device: device, sessionID: sink.sessionID, welcome: message, version: playback.version, epoch: playback.epoch,
                active: playback.activeDevice == device)
        } catch let refusal as ConnectRefusal {
            throw refusal
        } catch {
            _ = fanout.detach(device: device, sessionID: sink.sessionID)
            await unsubscribeIfUnused()
            logger.warning("connect failed: storage unavailable", metadata: ["error": .string("\(error)")])
            throw ConnectRefusal(code: .tryAgainLater, reason: "storage unavailable, try again later")
        }
    }

    func disconnect(device: String, sessionID: String, kind: DisconnectKind) async {
        await gate.run { await disconnectNow(device: device, sessionID: sessionID, kind: kind) }
    }

    private func disconnectNow(device: String, sessionID: String, kind: DisconnectKind) async {
        guard let fanout, fanout.detach(device: device, sessionID: sessionID) else { return }
        let identity = presence.leaving(device, stillHere: fanout.hasDevice(device))
        do {
            let (playback, before) = try await cachedOrLoaded(fanout)
            let now = self.now
            var directory = before
            directory.markOffline(id: device, now: now)
            // Only the device's current connection, the one its directory entry names, speaks for
            // it: a newer one (on any node, its replacement notice still on the way) keeps the lease.
            var left = false
            if let identity {
                left = try await storage.leave(
                    user: userID, device: device, session: sessionID,
                    entry: presence.entry(of: identity, session: nil, now: now),
                    frame: BusMessage(devices: directory.list(for: playback)))
                if left {
                    fanout.remember(directory: directory)
                    environment.durability.deviceSeen(
                        user: userID, id: device, name: identity.device.name, kind: identity.device.kind, at: now)
                }
            }
            await unsubscribeIfUnused()
            if left, playback.activeDevice == device {
                switch kind {
                case .released:
                    _ = await apply(
                        Submission(user: UserIdentity(userID: userID), input: .release, device: device),
                        cause: .init(op: "released", device: device, request: nil))
                case .lost:
                    // The grace period: the lease lives on for graceMs unless the device comes back.
                    try await lease.startGrace(for: playback, lostAt: now)
                case .replaced:
                    break
                }
            }
        } catch {
            await unsubscribeIfUnused()
            logger.warning("disconnect bookkeeping failed", metadata: ["device.id": .string(device), "error": .string("\(error)")])
        }
    }

    private func unsubscribeIfUnused() async {
        if environment.fanouts.removeIfEmpty(userID, now: now) { await storage.unsubscribe(user: userID) }
    }

    // MARK: Commands

    /// Applies a submission and calls `completion` with the answer, after the commit (the change
    /// reaches the devices through the bus).
    func submit(_ submission: Submission, completion: @escaping @Sendable (Result<Receipt, PlaybackError>) -> Void) {
        let cause = ServerMessage.Cause(op: submission.input.causeOp, device: submission.device, request: submission.requestID)
        gate.enqueue { [self] done in
            attempt(submission, cause: cause, number: 0) { result in
                completion(result)
                done()
            }
        }
    }

    /// Applies an input while holding the gate (disconnects, upkeep).
    private func apply(_ submission: Submission, cause: ServerMessage.Cause) async -> Result<Receipt, PlaybackError> {
        await withCheckedContinuation { continuation in
            attempt(submission, cause: cause, number: 0) { continuation.resume(returning: $0) }
        }
    }

    private typealias Finish = @Sendable (Result<Receipt, PlaybackError>) -> Void

    /// One try: the reducer on the cached state (loaded first when there is none), then one call.
    private func attempt(_ submission: Submission, cause: ServerMessage.Cause, number: Int, finish: @escaping Finish) {
        if let fanout, let (playback, directory) = fanout.cached() {
            run(submission, on: playback, directory: directory, cause: cause, number: number, finish: finish)
            return
        }
        // Not cached (no device of the user here, or the cache was dropped): read it first.
        let started = environment.work.submit { [self] in
            do {
                let (playback, directory) = try await loadBoth()
                fanout?.remember(playback)
                run(submission, on: playback, directory: directory, cause: cause, number: number, finish: finish)
            } catch {
                finish(.failure(unavailable(error)))
            }
        }
        if !started { finish(.failure(PlaybackError(.unavailable, "the server is shutting down; try again"))) }
    }

    private func run(
        _ submission: Submission, on playback: Playback, directory: DeviceDirectory, cause: ServerMessage.Cause, number: Int,
        finish: @escaping Finish
    ) {
        guard number < Self.maxAttempts else {
            finish(.failure(PlaybackError(.unavailable, "too many concurrent changes; try again")))
            return
        }
        if case let wait = playback.settling(at: now), wait > 0 {
            // Restored after the storage lost it: a node holding a newer snapshot may still put it
            // in its place, which a commit on top would prevent.
            finish(.failure(PlaybackError(.unavailable, "playback is being restored; try again", retryAfterMs: wait)))
            return
        }
        let reducerEnvironment = ReducerEnvironment(
            now: now, sender: submission.device, country: submission.user.country, devices: directory.presence,
            randomSeed: UInt64.random(in: 0...UInt64.max),
            confirmingDevices: submission.input.isTransfer ? directory.confirmingDevices : [])
        if number == 0, case .report(let epoch, let positionMs, _, let trackID) = submission.input, epoch == playback.epoch,
            submission.device == playback.activeDevice, trackID == playback.current?.track.id
        {
            // How far the holder's own position is from the server's extrapolation: sync you can see.
            let driftMs = abs(positionMs - playback.position(at: reducerEnvironment.now))
            Metrics.Timer(label: "playback_report_drift_seconds").recordNanoseconds(driftMs * 1_000_000)
            logger.debug("report drift", metadata: ["device.id": .string(submission.device ?? "-"), "report.drift_ms": .stringConvertible(driftMs)])
        }
        let outcome = Result { () throws(PlaybackError) -> Transition in
            try environment.reducer.apply(submission.input, to: playback, environment: reducerEnvironment, ifVersion: submission.ifVersion)
        }
        let answer: Result<Receipt, PlaybackError> = outcome.map {
            Receipt(version: $0.playback.version, entry: $0.entry, changed: $0.changed)
        }
        var requestID = submission.rememberedRequestID
        if case .failure(let error) = answer, error.code.isTransient { requestID = nil }
        var proposed: CommandCall.Change?
        if case .success(let transition) = outcome, transition.changed {
            let next = transition.playback
            let leaseOperation: CommandCall.LeaseOperation =
                transition.lease == nil ? .keep
                : next.activeDevice == nil ? .clear : .set(holder: LeaseHolder.value(of: next), ttlMs: timing.leaseTTLMs)
            proposed = CommandCall.Change(
                playback: next, json: ByteBuffer(bytes: PlaybackJSON.encode(next)), lease: leaseOperation,
                frame: BusMessage(
                    event: PlaybackEvent(transition, cause: Self.cause(of: transition, submitted: cause)).prepared,
                    devices: transition.lease == nil && next.deviceVolumes == playback.deviceVolumes ? nil : directory.list(for: next)))
        }
        let change = proposed
        let call = CommandCall(
            expectedVersion: playback.version, requestID: requestID, answer: answer, answerTTLMs: configuration.idempotencyWindowMs,
            answerCapacity: configuration.idempotencyCapacity, change: change)
        storage.command(user: userID, call) { [self] reply in
            switch reply {
            case .success(.done):
                if case .success(let transition) = outcome, let change { didCommit(transition, json: change.json, directory: directory) }
                finish(answer)
            case .success(.known(let known)):
                finish(known)
            case .success(.full(let retryAfterMs)):
                Counter(label: "playback_request_ids_full_total").increment()
                finish(.failure(PlaybackError(
                    .rateLimited, "too many request ids in the last 10 minutes (at most \(configuration.idempotencyCapacity)); try again later",
                    retryAfterMs: retryAfterMs)))
            case .success(.conflict(let current, let json)):
                Counter(label: "playback_commit_conflicts_total").increment()
                if let current, let fanout, Self.wentBack(current, seen: fanout.highWater) {
                    // Older than what this node saw: the next try loads it and restores above.
                    fanout.forgetCache(at: now)
                    attempt(submission, cause: cause, number: number + 1, finish: finish)
                } else if let current, current.settling(at: now) > 0 {
                    // Restored after the storage lost it, and still waiting for newer snapshots: the
                    // next try loads it, offering this node's newest (`loadPlayback`).
                    fanout?.forgetCache(at: now)
                    attempt(submission, cause: cause, number: number + 1, finish: finish)
                } else if let current {
                    fanout?.remember(current, json: json)
                    let latest = fanout?.cached()?.directory ?? directory
                    run(submission, on: current, directory: latest, cause: cause, number: number + 1, finish: finish)
                } else {
                    // The storage has no state (it lost it): the next try loads, and restores, it.
                    fanout?.forgetCache(at: now)
                    attempt(submission, cause: cause, number: number + 1, finish: finish)
                }
            case .failure(let error):
                finish(.failure(unavailable(error)))
            }
        }
    }

    /// The cause the devices see: a transfer undone (whatever found it: the deadline, the target's
    /// loss or release) is `transfer_failed`, naming the device that did not start.
    private static func cause(of transition: Transition, submitted: ServerMessage.Cause) -> ServerMessage.Cause {
        guard let lease = transition.lease, lease.reason == .transferFailed else { return submitted }
        return ServerMessage.Cause(op: "transfer_failed", device: lease.revoked, request: submitted.request)
    }

    private func didCommit(_ transition: Transition, json: ByteBuffer, directory: DeviceDirectory) {
        fanout?.remember(transition.playback, json: json)
        if let lease = transition.lease, let confirmBy = lease.confirmBy { checkConfirmation(epoch: lease.epoch, at: confirmBy) }
        environment.durability.committed(user: userID, transition: transition) { directory.records[$0]?.kind.rawValue }
        if let lease = transition.lease {
            Counter(label: "playback_lease_changes_total", dimensions: [("reason", lease.reason.rawValue)]).increment()
            logger.info("lease moved", metadata: [
                "lease.epoch": .stringConvertible(lease.epoch), "lease.reason": .string(lease.reason.rawValue),
                "lease.from": .string(lease.revoked ?? "-"), "lease.to": .string(lease.granted ?? "-"),
            ])
        }
    }

    /// At `confirmBy`, undoes the transfer at `epoch` unless its target confirmed it started (the
    /// reducer decides; a confirmed or superseded transfer makes it a no-op). Every node with devices
    /// of the user checks again in its upkeep, and a lapsed lease of the target undoes it too, so the
    /// rule holds when this node dies.
    private func checkConfirmation(epoch: Int64, at confirmBy: Int64) {
        let work = environment.work
        work.submit { [self] in
            // In steps, so that a node shutting down does not wait for it (the others check).
            while case let wait = confirmBy - now, wait > 0 {
                guard !work.isFinishing else { return }
                try? await Task.sleep(for: .milliseconds(min(wait, 100)))
            }
            submitConfirmDeadline(epoch: epoch)
        }
    }

    private func submitConfirmDeadline(epoch: Int64) {
        submit(Submission(user: UserIdentity(userID: userID), input: .confirmDeadline(epoch: epoch), device: nil)) { _ in }
    }

    func snapshot() async throws(PlaybackError) -> (state: PlayerState, devices: [DeviceInfo]) {
        do {
            let (playback, directory) = try await gate.run { try await loadBoth() }
            return (playback.playerState(includeQueue: true), directory.list(for: playback))
        } catch {
            throw unavailable(error)
        }
    }

    // MARK: Upkeep

    /// Renews the lease of a local holder, refreshes presence, and expires a lease whose lock is
    /// gone (its node died, or its device did not come back within the grace period).
    ///
    /// Outside the user's gate: the renewal is a compare-and-set in the storage and presence is the
    /// storage's, so commands never wait behind the upkeep's round trips (they did: with thousands
    /// of users, one command in ten waited hundreds of ms). Only an expiry takes the gate, as a
    /// command does, and the reducer turns it down if the lease moved meanwhile.
    func maintain() async {
        guard let fanout else { return }
        do {
            let now = self.now
            let connected = fanout.connectedSessions
            let refresh = try await presence.refreshIfDue(connected, now: now)
            switch refresh {
            case .lost?:
                // The storage lost the user's keys (a Redis restart without persistence, a flush):
                // the directory entries are written again, and the state is read (and restored) again.
                try await registerLocalDevices()
                fanout.forgetCache(at: now)
                _ = try await cachedOrLoaded(fanout)
            case .online(let online)?:
                // A node that died leaves its devices to expire from the online set.
                if let directory = fanout.cached()?.directory, Set(directory.records.filter(\.value.online).keys) != online {
                    fanout.remember(directory: try await loadDirectory())
                }
            case nil:
                break
            }
            if refresh != nil, case let rtts = fanout.roundTrips, !rtts.isEmpty {
                // With the presence refresh: the directory's round trips (`rtt_ms` in device lists).
                let sessions = Dictionary(connected.map { ($0.device, $0.session) }, uniquingKeysWith: { $1 })
                let written = try await presence.writeRoundTrips(rtts, sessions: sessions, now: now)
                if !written.isEmpty { fanout.remember(roundTrips: written) }
            }
            let playback: Playback
            if let cached = fanout.cachedPlayback ?? fanout.cached()?.playback {
                playback = cached
            } else {
                playback = try await loadPlayback()
                fanout.remember(playback)
            }
            if let pending = playback.pendingTransfer, now >= pending.confirmBy {
                // The node that made the transfer checks at the deadline; here in case it is gone.
                submitConfirmDeadline(epoch: playback.epoch)
            }
            // A lapsed lease is the sweep's (`sweep`), wherever its devices are.
            if let active = playback.activeDevice, fanout.hasDevice(active) {
                try await lease.renew(playback, now: now)
            }
        } catch {
            logger.debug("lease upkeep failed", metadata: ["error": .string("\(error)")])
        }
    }

    /// The storage's deadlines say this user's lease lapsed (its holder's node may be dead, and no
    /// device of the user may be here): under the gate, on the stored state read afresh, expires it
    /// if it is still gone (its device may have come back meanwhile, which takes the lease under
    /// the gate), then settles the deadline. A holder still connected to a live node only missed
    /// its renewals (a starved process): this node takes the lease back if the holder is here,
    /// else leaves it to the holder's node for a tick.
    func sweep() async {
        do {
            try await gate.run {
                let playback = try await loadPlayback()
                fanout?.remember(playback)
                if let device = playback.activeDevice, let lostAt = try await lease.lapse(of: playback, now: now) {
                    if fanout?.hasDevice(device) == true {
                        try await lease.take(for: playback, now: now)
                        try await lease.settleDeadline()
                        return
                    }
                    if try await storage.liveNode(of: device, user: userID) != nil {
                        try await storage.deferLeaseSweep(user: userID, ms: timing.tickMs)
                        return
                    }
                    logger.info("lease expired", metadata: [
                        "device.id": .string(device), "lease.epoch": .stringConvertible(playback.epoch),
                        "lease.lost_ms_ago": .stringConvertible(now - lostAt),
                    ])
                    _ = await apply(
                        Submission(user: UserIdentity(userID: userID), input: .expire(device: device, lostAt: lostAt), device: nil),
                        cause: .init(op: "expired", device: device, request: nil))
                }
                try await lease.settleDeadline()
            }
        } catch {
            logger.debug("lease sweep failed", metadata: ["error": .string("\(error)")])
        }
    }

    /// After a bus outage: send the current state to local devices if they may have missed it.
    /// The storage may still be reconnecting, so it tries for a while, without holding the
    /// user's gate between attempts.
    func recover() async {
        for attempt in 0..<20 {
            if await gate.run({ await recoverNow() }) { return }
            try? await Task.sleep(for: .milliseconds(100 * min(attempt + 1, 5)))
        }
    }

    /// False when the state could not be read.
    private func recoverNow() async -> Bool {
        guard let fanout else { return true }
        fanout.forgetCache(at: now)
        guard let (playback, _) = try? await cachedOrLoaded(fanout) else { return false }
        logger.debug("recovered after the bus was down", metadata: ["playback.version": .stringConvertible(playback.version)])
        guard playback.version > fanout.latestVersion else { return true }
        // The active device may have missed its grant too (a restored playback has a new epoch); a
        // revoke that was missed is sent by the fan-out, which knows which local device it told.
        let lease = playback.activeDevice.flatMap { active in
            fanout.needsGrant(active, epoch: playback.epoch)
                ? LeaseChange(epoch: playback.epoch, revoked: nil, granted: active, reason: .transferred) : nil
        }
        fanout.receive(BusMessage(event: PlaybackEvent(
            state: playback.playerState(includeQueue: true), queueChanged: true, lease: lease,
            cause: .init(op: "recovered", device: nil, request: nil)).prepared))
        return true
    }

    /// Tells a local device that holds the lease its current epoch, with the full state (its
    /// grant was lost while the bus was down).
    func regrant(_ device: String) async {
        await gate.run {
            guard let fanout, let playback = try? await loadPlayback(), playback.activeDevice == device else { return }
            fanout.remember(playback)
            fanout.grant(
                EncodedMessage(.leaseGranted(.init(epoch: playback.epoch, state: playback.playerState(includeQueue: true)))), to: device,
                epoch: playback.epoch)
        }
    }

    /// Writes this node's connected devices of the user into the directory again (after the storage lost it).
    private func registerLocalDevices() async throws {
        guard let fanout else { return }
        let sessions = fanout.connectedSessions
        try await presence.register(sessions, now: now)
    }

    /// Queues the current state for PostgreSQL now (shutdown).
    func writeSnapshot() async {
        guard let writer = environment.durability.writer else { return }
        var playback = fanout?.cached()?.playback
        if playback == nil { playback = try? await loadPlayback() }
        guard let playback, playback.version > 0 else { return }
        writer.snapshot(user: userID, playback: playback, urgent: true)
    }

    // MARK: Storage

    /// The cached playback and directory, loaded (and cached) when there are none.
    private func cachedOrLoaded(_ fanout: UserFanout) async throws -> (Playback, DeviceDirectory) {
        if let cached = fanout.cached() { return cached }
        let (playback, directory) = try await loadBoth()
        fanout.remember(playback)
        fanout.remember(directory: directory)
        return (fanout.cached()?.playback ?? playback, directory)
    }

    private func loadBoth() async throws -> (Playback, DeviceDirectory) {
        async let playback = loadPlayback()
        async let directory = loadDirectory()
        return try await (playback, directory)
    }

    private func loadDirectory() async throws -> DeviceDirectory {
        try await storage.loadDirectory(user: userID, now: now, retentionMs: configuration.deviceRetentionMs)
    }

    private func loadPlayback() async throws -> Playback {
        guard let playback = try await storage.loadPlayback(user: userID) else { return try await restorePlayback() }
        if let seen = environment.fanouts.highWater(of: userID, now: now), Self.wentBack(playback, seen: (seen.epoch, seen.version)) {
            return try await restorePlayback(replacing: playback)
        }
        // A restore still waiting for newer snapshots: this node offers the newest it can find.
        if playback.settling(at: now) > 0 {
            let known = fanout?.lastKnown.map { (playback: $0.playback, takenAt: $0.at) }
            let newest = try? await environment.durability.newestSnapshot(user: userID, alsoKnown: known)?.playback
            logger.debug("a restore is settling", metadata: [
                "restored.source": .stringConvertible(playback.restoredFrom?.source ?? -1),
                "snapshot.version": .stringConvertible(newest?.contentVersion ?? -1),
            ])
            if let newer = Self.newerSnapshot(than: playback, pending: newest) {
                return try await replaceRestore(playback, with: newer, source: newer.contentVersion)
            }
        }
        return playback
    }

    /// A snapshot this node holds (queued for PostgreSQL) that is newer than the one `stored` was
    /// restored from, when nothing has committed on top of that restore: the newest snapshot any
    /// node holds wins. The snapshot counts with the version of its content: its own when taken
    /// before the loss (below the restore's, which was raised above everything handed out), its
    /// source's when it is itself a restore this node queued.
    static func newerSnapshot(than stored: Playback, pending: Playback?) -> Playback? {
        guard let pending, pending.version < stored.version || pending.contentVersion != pending.version,
            stored.isRestore(olderThan: pending.contentVersion)
        else { return nil }
        return pending
    }

    /// Puts `newer` (from the snapshot of version `source`) in place of the restore `stored`, above
    /// it: a compare-and-set on the stored version, so a command committed meanwhile keeps its place.
    /// Another node may replace it first with a snapshot of its own: then this one goes in on top
    /// of that, if it is still the newer, for a few rounds.
    private func replaceRestore(_ stored: Playback, with newer: Playback, source: Int64) async throws -> Playback {
        var stored = stored
        for _ in 0..<4 {
            var replacement = newer
            replacement.epoch = max(newer.epoch, stored.epoch + 1)
            replacement.version = max(newer.version, stored.version + 1)
            // The replacement settles when the restore it replaces would have: replacing never extends it.
            replacement.restoredFrom = .init(source: source, at: replacement.version, settlesAt: stored.restoredFrom?.settlesAt ?? 0)
            let replaced = try await storage.restore(
                user: userID, playback: replacement, holder: replacement.activeDevice == nil ? nil : LeaseHolder.value(of: replacement),
                ttlMs: timing.leaseTTLMs, frame: Self.restoredFrame(replacement), replacing: stored.version)
            if replaced {
                Counter(label: "playback_restores_total", dimensions: [("from", "newer_snapshot")]).increment()
                logger.notice("an older restore replaced by a newer snapshot held here", metadata: [
                    "restored.source": .stringConvertible(stored.restoredFrom?.source ?? -1), "snapshot.version": .stringConvertible(source),
                    "restored.version": .stringConvertible(replacement.version),
                ])
                environment.durability.writer?.snapshot(user: userID, playback: replacement, urgent: true)
                return replacement
            }
            guard let current = try await storage.loadPlayback(user: userID) else { return stored }
            guard current.isRestore(olderThan: source) else { return current }
            stored = current
        }
        return stored
    }

    /// The bus frame that tells the user's devices about a restored playback.
    private static func restoredFrame(_ playback: Playback) -> BusMessage {
        let lease = playback.activeDevice.map { LeaseChange(epoch: playback.epoch, revoked: nil, granted: $0, reason: .transferred) }
        return BusMessage(event: PlaybackEvent(
            state: playback.playerState(includeQueue: true), queueChanged: true, lease: lease,
            cause: .init(op: "restored", device: nil, request: nil)).prepared)
    }

    /// True when the stored playback is older than what this node saw of the user: the storage
    /// went back in time (a Redis failover that lost acknowledged writes, a restart from an old
    /// dump). Epochs and versions only ever rise in storage; the one look-alike, a read answered
    /// just before a commit whose frame arrived first, is told apart by reading again.
    static func wentBack(_ stored: Playback, seen: (epoch: Int64, version: Int64)) -> Bool {
        stored.epoch < seen.epoch || stored.version < seen.version
    }

    /// The storage has no state for the user: a new user, or it lost it (a Redis restart without
    /// persistence, a flush, eviction; a new process of the memory engine); or, with `replacing`,
    /// it holds an older state than this node saw. Puts back the newest of the PostgreSQL
    /// snapshot and the stored state, with an epoch and version raised above everything seen
    /// (see `Durability.restore`), tells the user's devices, and reads again.
    private func restorePlayback(replacing stale: Playback? = nil) async throws -> Playback {
        if let stale {
            // A read answered before a commit whose frame came first looks the same: read again.
            if let again = try await storage.loadPlayback(user: userID), (again.epoch, again.version) != (stale.epoch, stale.version) {
                return again
            }
            Counter(label: "playback_storage_regressions_total").increment()
            logger.warning("stored playback older than seen here; restoring above", metadata: [
                "stored.epoch": .stringConvertible(stale.epoch), "stored.version": .stringConvertible(stale.version),
            ])
        }
        try await registerLocalDevices()
        let restored: Playback
        var frame: BusMessage?
        let known = fanout?.lastKnown.map { (playback: $0.playback, takenAt: $0.at) }
        var outcome = await environment.durability.restore(user: userID, clock: environment.clock, alsoKnown: known)
        // Read after PostgreSQL answered (or timed out): the jump, the floors and the settling count from now.
        let now = self.now
        if case .unreachable(let empty) = outcome {
            if var stale {
                // What the storage still holds beats an empty playback.
                stale.restoredFrom = .init(source: stale.version, at: stale.version)
                outcome = .unknown(stale)
            } else if environment.fanouts.highWater(of: userID, now: now) != nil {
                // A user this node served: their snapshot is in PostgreSQL, and starting them empty
                // would lose their queue and track for good. Their changes wait for it (`unavailable`).
                throw PlaybackError(.unavailable, "this playback is being restored and PostgreSQL is unreachable; try again", retryAfterMs: 1_000)
            } else {
                Counter(label: "playback_restores_total", dimensions: [("from", "clock")]).increment()
                outcome = .unknown(empty)
            }
        }
        if var stale {
            stale.restoredFrom = .init(source: stale.version, at: stale.version)
            switch outcome {
            case .fresh:
                outcome = .unknown(stale)
            case .snapshot(let playback), .unknown(let playback), .unreachable(let playback):
                if (playback.epoch, playback.version) < (stale.epoch, stale.version) { outcome = .unknown(stale) }
            }
        }
        if let mark = environment.fanouts.highWater(of: userID, now: now) {
            // Above everything this node saw handed out, even without PostgreSQL (invariants 1 and
            // 3): by the time since it saw it, as a snapshot of that age would be.
            var base = Playback.initial
            base.epoch = mark.epoch
            base.version = mark.version
            let floor = Durability.resume(base, takenAt: mark.at, now: now)
            switch outcome {
            case .fresh:
                outcome = .unknown(floor)
            case .snapshot(var playback), .unknown(var playback), .unreachable(var playback):
                if (playback.epoch, playback.version) < (floor.epoch, floor.version) {
                    playback.epoch = max(playback.epoch, floor.epoch)
                    playback.version = max(playback.version, floor.version)
                    outcome = .snapshot(playback)
                }
            }
        }
        switch outcome {
        case .fresh:
            // The empty state is stored, so that the next read finds it instead of coming here again.
            restored = .initial
        case .snapshot(var playback), .unknown(var playback), .unreachable(var playback):
            // Which snapshot it came from (-1: none), at the version it is put back at, and until when
            // it waits for a newer one that another node may hold.
            playback.restoredFrom = .init(
                source: playback.restoredFrom?.source ?? -1, at: playback.version, settlesAt: now + configuration.restoreSettleMs)
            restored = playback
            frame = Self.restoredFrame(playback)
        }
        let won = try await storage.restore(
            user: userID, playback: restored, holder: restored.activeDevice == nil ? nil : LeaseHolder.value(of: restored),
            ttlMs: timing.leaseTTLMs, frame: frame, replacing: stale?.version)
        guard var playback = try await storage.loadPlayback(user: userID) else {
            throw PlaybackError(.internal, "playback of \(userID) vanished right after it was restored")
        }
        // Another node restored first, from an older snapshot than this one: the newer one wins.
        if !won, let source = restored.restoredFrom?.source, restored.version > 0, playback.isRestore(olderThan: source) {
            playback = try await replaceRestore(playback, with: restored, source: source)
        }
        // The snapshot is of what the storage holds now: another node may have restored first, and
        // a restore that lost must not leave its own (never used) state in PostgreSQL.
        if playback.version > 0 { environment.durability.writer?.snapshot(user: userID, playback: playback, urgent: true) }
        return playback
    }

    /// Clients learn that storage is down; the details go to the log, not to them.
    private func unavailable(_ error: any Error) -> PlaybackError {
        logger.warning("storage unavailable", metadata: ["error": .string("\(error)")])
        return PlaybackError(.unavailable, "storage unavailable; try again")
    }
}
