import Foundation
import Logging
import Metrics
import NIOCore

/// One user's playback as this node serves it, the same for both engines: connects and the
/// welcome, disconnects and what they do to the lease, commands through the reducer, delivery
/// to the local devices, the lease's upkeep, the durability hooks. What it stores goes through a
/// `PlaybackStorage`.
///
/// Everything this node knows of the user lives here, on one event loop: the actor's executor is
/// the user's loop (`UserShards`), so its state needs no lock, and the storage's replies, read on
/// that loop's Redis connection, continue it without a hop. Its work is serialized by a `UserGate`
/// (an actor alone would interleave at every await).
///
/// A command costs one storage call in the common case: the reducer runs on the state this node
/// keeps while it has devices of the user (`UserFanout`'s cache), and `PlaybackStorage.command`
/// answers a remembered request id, checks the version, and commits or confirms in one go. A
/// conflict reply carries the current state, so the retry needs no read. Commands run without a
/// task: the storage's callback finishes them and starts the next job.
actor UserPlayback<Storage: PlaybackStorage> {
    nonisolated let userID: String
    nonisolated let environment: UserEnvironment<Storage>
    nonisolated let logger: Logger
    /// The loop this user lives on, and the highest epochs and versions seen there of users that left.
    nonisolated let loop: any EventLoop
    nonisolated let marks: NIOLoopBoundBox<HighWaterMarks>

    let gate: UserGate
    let lease: LeaseKeeper<Storage>
    let presence: UserPresence<Storage>
    /// The user's devices on this node and what it knows of the user, while it is subscribed to the
    /// user's channel.
    var fanout: UserFanout?
    /// The user's country from the users table, for tokens that carry none (looked up by the first
    /// command that needs it).
    var storedCountry: Durability.CachedCountry?

    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.executor.asUnownedSerialExecutor() }

    init(userID: String, environment: UserEnvironment<Storage>, shard: UserShard<Storage>) {
        self.userID = userID
        self.environment = environment
        var logger = environment.logger
        logger[metadataKey: "user.id"] = .string(userID)
        self.logger = logger
        loop = shard.loop
        marks = shard.marks
        gate = UserGate(loop: shard.loop)
        lease = LeaseKeeper(user: userID, storage: environment.storage, timing: environment.timing)
        presence = UserPresence(user: userID, storage: environment.storage, timing: environment.timing, nodeID: environment.nodeID)
    }

    nonisolated var storage: Storage { environment.storage }
    nonisolated var configuration: EngineConfiguration { environment.configuration }
    nonisolated var timing: LeaseTiming { environment.timing }
    nonisolated var now: Int64 { environment.clock() }

    /// Callers of the engine between finding the user and being done with it (`StorageEngine.visit`).
    var visitors = 0

    /// No device here, nothing running or waiting, nobody about to: the shard may forget the user.
    var isUnused: Bool { fanout == nil && gate.isIdle && visitors == 0 }

    /// Runs `body` on the user's loop: at once when called there (a storage reply read on the
    /// user's Redis connection), else after one hop.
    nonisolated func onLoop(_ body: @escaping @Sendable (isolated UserPlayback) -> Void) {
        if loop.inEventLoop {
            assumeIsolated(body)
        } else {
            loop.execute { self.assumeIsolated(body) }
        }
    }

    /// The highest epoch and version this node knows were handed out for the user, and when it
    /// learnt them (from the fan-out, or remembered since it went).
    func highWater(now: Int64) -> HighWaterMarks.Mark? {
        var best = marks.value.mark(of: userID)
        if let seen = fanout?.highWater, seen.version > 0 || seen.epoch > 0,
            (seen.epoch, seen.version) > (best?.epoch ?? -1, best?.version ?? -1)
        {
            best = HighWaterMarks.Mark(epoch: max(seen.epoch, best?.epoch ?? 0), version: max(seen.version, best?.version ?? 0), at: now)
        }
        return best
    }

    // MARK: Connections

    func connect(hello: ClientMessage.Hello, sink: any DeviceSink, welcome: WelcomeParameters) async throws(ConnectRefusal) {
        let outcome: Result<Void, ConnectRefusal> = await gate.run { () async -> Result<Void, ConnectRefusal> in
            do throws(ConnectRefusal) {
                try await connectNow(hello: hello, sink: sink, welcome: welcome)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try outcome.get()
    }

    func connectNow(hello: ClientMessage.Hello, sink: any DeviceSink, welcome: WelcomeParameters) async throws(ConnectRefusal) {
        let device = hello.isRemote ? RemoteControl.key(hello.device.id) : hello.device.id
        let fanout = self.fanout ?? UserFanout(loop: loop)
        let created = self.fanout == nil
        self.fanout = fanout
        do {
            if created { try await storage.subscribe(user: userID) }
            if let replaced = fanout.beginWelcome(sink, device: device) {
                replaced.close(.replaced, reason: "replaced by a newer connection of this device")
            }
            if let lastSeen = hello.lastSeen {
                // What the device saw was handed out: a restore must start above it.
                marks.value.raise(userID, epoch: lastSeen.epoch, version: lastSeen.version, at: now)
            }
            // The cache is loaded once while this node is subscribed; later devices are welcomed from it.
            let (playback, before) = try await cachedOrLoaded(fanout)
            let now = self.now
            // A remote control is delivered to as a device is, and otherwise left out: not listed,
            // not counted against the cap, never active.
            let devices =
                hello.isRemote
                ? before.list(for: playback)
                : try await join(hello, sink: sink, fanout: fanout, playback: playback, directory: before, now: now)
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
            throw ConnectRefusal(
                code: .tryAgainLater,
                reason: Reconnecting.closeReason("storage unavailable, try again later", retryAfterMs: Int64.random(in: 1_000...3_000)))
        }
    }

    /// A device joins the user's directory (within the cap, as this node sees it and then as the
    /// storage does, atomically across nodes) and takes back its lease if it held it; answers the
    /// device list its welcome shows.
    private func join(
        _ hello: ClientMessage.Hello, sink: any DeviceSink, fanout: UserFanout, playback: Playback, directory before: DeviceDirectory, now: Int64
    ) async throws -> [DeviceInfo] {
        let device = hello.device.id
        let cap = configuration.maxDevicesPerUser
        var directory = before
        directory.markOnline(id: device, name: hello.device.name, kind: hello.device.kind, capabilities: hello.knownCapabilities, now: now)
        directory.prune(now: now, retentionMs: configuration.deviceRetentionMs, cap: cap)
        let devices = directory.list(for: playback)
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
        return devices
    }

    func disconnect(device: String, sessionID: String, kind: DisconnectKind) async {
        await gate.run { await disconnectNow(device: device, sessionID: sessionID, kind: kind) }
    }

    func disconnectNow(device: String, sessionID: String, kind: DisconnectKind) async {
        guard let fanout, fanout.detach(device: device, sessionID: sessionID) else { return }
        // A remote control was never listed and never held the lease.
        guard !RemoteControl.isKey(device) else {
            await unsubscribeIfUnused()
            return
        }
        let identity = presence.leaving(device, stillHere: fanout.hasDevice(device))
        do {
            let (playback, before) = try await cachedOrLoaded(fanout)
            let now = self.now
            var directory = before
            directory.markOffline(id: device, now: now)
            // Only the connection the device's entry names speaks for it (`DisconnectRule`).
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
            switch DisconnectRule.decide(kind, left: left, heldLease: playback.activeDevice == device) {
            case .release:
                _ = await apply(
                    Submission(user: UserIdentity(userID: userID), input: .release, device: device),
                    cause: .init(op: "released", device: device, request: nil))
            case .grace:
                try await lease.startGrace(for: playback, lostAt: now)
            case .keep:
                break
            }
            // The user's last device here left: if nobody is left anywhere and nothing changed since
            // PostgreSQL's snapshot, the user may leave Redis (a change would have its own snapshot).
            if fanout.isEmpty, environment.configuration.idleTTLMs > 0, playback.activeDevice == nil,
                await environment.durability.isDurable(user: userID, version: playback.version)
            {
                if (try? await storage.expireIfIdle(user: userID, version: playback.version, ttlMs: environment.configuration.idleTTLMs)) == true {
                    Counter(label: "playback_idle_expiries_total").increment()
                }
            }
        } catch {
            await unsubscribeIfUnused()
            logger.warning("disconnect bookkeeping failed", metadata: ["device.id": .string(device), "error": .string("\(error)")])
        }
    }

    /// Unsubscribes from the user's channel when no device of the user is here any more
    /// (remembering the highest epoch and version seen).
    func unsubscribeIfUnused() async {
        guard let fanout, fanout.isEmpty else { return }
        self.fanout = nil
        let mark = fanout.highWater
        marks.value.raise(userID, epoch: mark.epoch, version: mark.version, at: now)
        await storage.unsubscribe(user: userID)
    }

    // MARK: Storage

    /// The cached playback and directory, loaded (and cached) when there are none.
    func cachedOrLoaded(_ fanout: UserFanout) async throws -> (Playback, DeviceDirectory) {
        if let cached = fanout.cached() { return cached }
        let mark = fanout.directoryMark
        let (playback, directory) = try await loadBoth()
        fanout.remember(playback)
        // A join, a leave or a device list that came meanwhile is newer than this read.
        fanout.remember(directory: directory, readAt: mark)
        let newest = fanout.cached()
        return (newest?.playback ?? playback, newest?.directory ?? directory)
    }

    func loadBoth() async throws -> (Playback, DeviceDirectory) {
        async let playback = loadPlayback()
        async let directory = loadDirectory()
        return try await (playback, directory)
    }

    func loadDirectory() async throws -> DeviceDirectory {
        try await storage.loadDirectory(user: userID, now: now, retentionMs: configuration.deviceRetentionMs)
    }

    func loadPlayback() async throws -> Playback {
        guard let playback = try await storage.loadPlayback(user: userID) else { return try await restorePlayback() }
        if let seen = highWater(now: now), RestoreFloor.wentBack(playback, seen: (seen.epoch, seen.version)) {
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
            if let newer = RestoreFloor.newerSnapshot(than: playback, pending: newest) {
                return try await replaceRestore(playback, with: newer, source: newer.contentVersion)
            }
        }
        return playback
    }

    /// Clients learn that storage is down; the details go to the log, not to them.
    func unavailable(_ error: any Error) -> PlaybackError {
        logger.warning("storage unavailable", metadata: ["error": .string("\(error)")])
        return PlaybackError(.unavailable, "storage unavailable; try again")
    }
}
