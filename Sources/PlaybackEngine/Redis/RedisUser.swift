import Foundation
import Logging
import Metrics
import NIOCore
import RedisClient
import Synchronization

/// One user's work on this node, serialized by a `UserGate`: connects, disconnects, commands,
/// lease upkeep.
///
/// A command costs one Redis call in the common case: the reducer runs on the state this node
/// keeps while it has devices of the user (`UserFanout`'s cache), and `RedisScripts.command`
/// answers a remembered request id, checks the version, and commits or confirms in one go. A
/// conflict reply carries the current state, so the retry needs no read. Commands run without a
/// task: the reply's callback finishes them and starts the next job.
final class RedisUser: Sendable {
    let userID: String
    let keys: RedisKeys
    let engine: RedisEngine
    let logger: Logger
    private static let maxAttempts = 8
    private let gate = UserGate()

    private struct Local {
        /// Who this node's connected devices of the user are, to register them again if Redis loses them.
        var identities: [String: ClientMessage.Hello.Device] = [:]
        /// When the upkeep last refreshed the presence of the local devices (server ms).
        var presenceRefreshedAt: Int64?
        /// The lease this node last renewed for a local holder, and when (server ms).
        var renewed: (lock: String, at: Int64)?
    }

    private let local = Mutex(Local())

    /// Nothing running or waiting.
    var isIdle: Bool { gate.isIdle }

    init(userID: String, engine: RedisEngine) {
        self.userID = userID
        self.keys = RedisKeys(user: userID)
        self.engine = engine
        var logger = engine.logger
        logger[metadataKey: "user.id"] = .string(userID)
        self.logger = logger
    }

    private var redis: RedisClient { engine.redis }
    private var now: Int64 { engine.clock() }
    private var fanout: UserFanout? { engine.registry.fanout(for: userID) }

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
        let (fanout, created) = engine.registry.fanoutCreating(for: userID)
        do {
            if created { try await engine.subscriber.subscribe(keys.channel) }
            if let replaced = fanout.beginWelcome(sink, device: device) {
                replaced.close(.replaced, reason: "replaced by a newer connection of this device")
            }
            // The cache is loaded once while this node is subscribed; later devices are welcomed from it.
            let (playback, before) = try await cachedOrLoaded(fanout)
            if !before.isOnline(device), before.onlineCount >= engine.configuration.maxDevicesPerUser {
                _ = fanout.detach(device: device, sessionID: sink.sessionID)
                await unsubscribeIfUnused()
                throw ConnectRefusal(
                    code: .policyViolation, reason: "too many devices connected (at most \(engine.configuration.maxDevicesPerUser))")
            }
            local.withLock { $0.identities[device] = hello.device }
            let now = self.now
            var directory = before
            directory.markOnline(id: device, name: hello.device.name, kind: hello.device.kind, now: now)
            directory.prune(now: now, retentionMs: engine.configuration.deviceRetentionMs)
            fanout.remember(directory: directory)
            let devices = directory.list(activeDevice: playback.activeDevice)
            let stored = StoredDevice(name: hello.device.name, kind: hello.device.kind, lastSeen: now, session: sink.sessionID, node: engine.nodeID)
            let frame = BusMessage(devices: devices, except: device, replace: .init(device: device, session: sink.sessionID))
            _ = try await redis.evaluate(
                engine.joinScript, keys: [keys.devices, keys.online],
                arguments: [
                    .string(device), .bytes(try Self.json(stored)), .integer(now + engine.presenceTTLMs), .string(keys.channel),
                    .bytes(frame.encoded()),
                ])
            if playback.activeDevice == device {
                // Back within the grace period (or moved nodes): this node holds the lease now.
                _ = try await redis.send(["SET", .string(keys.lock), .string(lockValue(playback)), "PX", .integer(engine.leaseTTLMs)])
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
        let identity = local.withLock { local in
            let identity = local.identities[device]
            if !fanout.hasDevice(device) { local.identities[device] = nil }
            return identity
        }
        do {
            let (playback, before) = try await cachedOrLoaded(fanout)
            let now = self.now
            var directory = before
            directory.markOffline(id: device, now: now)
            if let identity {
                let offline = StoredDevice(name: identity.name, kind: identity.kind, lastSeen: now, session: nil, node: nil)
                let frame = BusMessage(devices: directory.list(activeDevice: playback.activeDevice))
                let left = try await redis.evaluate(
                    engine.leaveScript, keys: [keys.devices, keys.online],
                    arguments: [.string(device), .string(sessionID), .bytes(try Self.json(offline)), .string(keys.channel), .bytes(frame.encoded())])
                if left.int == 1 {
                    fanout.remember(directory: directory)
                    engine.durability.deviceSeen(user: userID, id: device, name: identity.name, kind: identity.kind, at: now)
                }
            }
            await unsubscribeIfUnused()
            if playback.activeDevice == device {
                switch kind {
                case .released:
                    _ = await apply(
                        Submission(user: UserIdentity(userID: userID), input: .release, device: device),
                        cause: .init(op: "released", device: device, request: nil))
                case .lost:
                    // The grace period: the lease lives on for graceMs unless the device comes back.
                    _ = try await redis.evaluate(
                        engine.renewScript, keys: [keys.lock], arguments: [.string(lockValue(playback)), .integer(engine.configuration.graceMs)])
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
        if engine.registry.removeIfEmpty(userID) { try? await engine.subscriber.unsubscribe(keys.channel) }
    }

    // MARK: Commands

    /// Applies a submission and calls `completion` with the answer, after the commit (the change
    /// reaches the devices through the channel).
    func submit(_ submission: Submission, completion: @escaping @Sendable (Result<Receipt, PlaybackError>) -> Void) {
        let cause = ServerMessage.Cause(op: submission.input.causeOp, device: submission.device, request: submission.requestID)
        gate.enqueue { [self] done in
            attempt(submission, cause: cause, number: 0) { result in
                completion(result)
                done()
            }
        }
    }

    func submit(_ submission: Submission) async -> Result<Receipt, PlaybackError> {
        await withCheckedContinuation { continuation in submit(submission) { continuation.resume(returning: $0) } }
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
        Task {
            do {
                let (playback, directory) = try await loadBoth()
                fanout?.remember(playback)
                run(submission, on: playback, directory: directory, cause: cause, number: number, finish: finish)
            } catch {
                finish(.failure(unavailable(error)))
            }
        }
    }

    private func run(
        _ submission: Submission, on playback: Playback, directory: DeviceDirectory, cause: ServerMessage.Cause, number: Int,
        finish: @escaping Finish
    ) {
        guard number < Self.maxAttempts else {
            finish(.failure(PlaybackError(.unavailable, "too many concurrent changes; try again")))
            return
        }
        let environment = ReducerEnvironment(
            now: now, sender: submission.device, country: submission.user.country, devices: directory.presence,
            randomSeed: UInt64.random(in: 0...UInt64.max))
        let outcome = Result { () throws(PlaybackError) -> Transition in
            try engine.reducer.apply(submission.input, to: playback, environment: environment, ifVersion: submission.ifVersion)
        }
        let answer: Result<Receipt, PlaybackError> = outcome.map {
            Receipt(version: $0.playback.version, entry: $0.entry, changed: $0.changed)
        }
        let requestID = submission.rememberedRequestID
        var remember = requestID != nil
        if case .failure(let error) = answer, error.code.isTransient { remember = false }
        var arguments: [RedisArgument] = [
            .integer(playback.version), .string(remember ? "1" : "0"),
            remember ? .bytes(Self.answerJSON(answer)) : .string(""), .integer(engine.configuration.idempotencyWindowMs),
        ]
        let committed: (transition: Transition, json: ByteBuffer)?
        if case .success(let transition) = outcome, transition.changed {
            let next = transition.playback
            let json = Self.json(next)
            let devices = transition.lease == nil ? nil : directory.list(activeDevice: next.activeDevice)
            let frame = BusMessage(event: PlaybackEvent(transition, cause: cause).prepared, devices: devices)
            let head = frame.encodedHead(storedLength: json.readableBytes)
            let leaseOp = transition.lease == nil ? "keep" : (next.activeDevice == nil ? "del" : "set")
            arguments += [
                "commit", .integer(next.version), .integer(next.epoch), .bytes(json), .string(leaseOp), .string(lockValue(next)),
                .integer(engine.leaseTTLMs), .string(keys.channel), .bytes(head),
            ]
            committed = (transition, json)
        } else {
            arguments.append("confirm")
            committed = nil
        }
        let keys = [self.keys.playback, self.keys.lock, self.keys.request(requestID ?? "-")]
        redis.evaluateFuture(engine.commandScript, keys: keys, arguments: arguments).whenComplete { [self] reply in
            switch reply.map(CommandReply.init) {
            case .success(.done):
                if let (transition, json) = committed { didCommit(transition, json: json, directory: directory) }
                finish(answer)
            case .success(.known(let stored)):
                finish((try? Self.decodeAnswer(stored)) ?? .failure(PlaybackError(.internal, "unreadable remembered answer")))
            case .success(.conflict(let current)):
                Counter(label: "playback_commit_conflicts_total").increment()
                if let current {
                    fanout?.remember(current.playback, json: current.json)
                    let latest = fanout?.cached()?.directory ?? directory
                    run(submission, on: current.playback, directory: latest, cause: cause, number: number + 1, finish: finish)
                } else {
                    // Redis has no state (it lost it): the next try loads, and restores, it.
                    fanout?.forgetCache()
                    attempt(submission, cause: cause, number: number + 1, finish: finish)
                }
            case .success(.malformed(let text)):
                finish(.failure(unavailable(RedisError(.protocolError, text))))
            case .failure(let error):
                finish(.failure(unavailable(error)))
            }
        }
    }

    /// What the command script answered.
    private enum CommandReply {
        case done
        case known(ByteBuffer)
        case conflict((playback: Playback, json: ByteBuffer)?)
        case malformed(String)

        init(_ reply: RESPValue) {
            guard case .array(let parts) = reply, let status = parts.first?.int else {
                self = .malformed("unexpected command reply \(reply)")
                return
            }
            switch (status, parts.count > 1 ? parts[1] : .null) {
            case (1, _): self = .done
            case (2, .bulkString(let stored)): self = .known(stored)
            case (0, _):
                if parts.count > 2, case .bulkString(let json) = parts[2],
                    let playback = try? JSONDecoder().decode(Playback.self, from: Data(json.readableBytesView))
                {
                    self = .conflict((playback, json))
                } else {
                    self = .conflict(nil)
                }
            default: self = .malformed("unexpected command reply \(reply)")
            }
        }
    }

    private func didCommit(_ transition: Transition, json: ByteBuffer, directory: DeviceDirectory) {
        fanout?.remember(transition.playback, json: json)
        engine.durability.committed(user: userID, transition: transition) { directory.records[$0]?.kind.rawValue }
        if let lease = transition.lease {
            Counter(label: "playback_lease_changes_total", dimensions: [("reason", lease.reason.rawValue)]).increment()
            logger.info("lease moved", metadata: [
                "lease.epoch": .stringConvertible(lease.epoch), "lease.reason": .string(lease.reason.rawValue),
                "lease.from": .string(lease.revoked ?? "-"), "lease.to": .string(lease.granted ?? "-"),
            ])
        }
    }

    func snapshot() async throws(PlaybackError) -> (state: PlayerState, devices: [DeviceInfo]) {
        do {
            let (playback, directory) = try await gate.run { try await loadBoth() }
            return (playback.playerState(includeQueue: true), directory.list(activeDevice: playback.activeDevice))
        } catch {
            throw unavailable(error)
        }
    }

    // MARK: Upkeep

    /// Renews the lease of a local holder, refreshes presence, and expires a lease whose lock is
    /// gone (its node died, or its device did not come back within the grace period).
    func maintain() async {
        await gate.run { await maintainNow() }
    }

    private func maintainNow() async {
        guard let fanout else { return }
        do {
            let local = fanout.connectedDevices
            let now = self.now
            let refresh = self.local.withLock { state -> Bool in
                guard !local.isEmpty, state.presenceRefreshedAt.map({ now - $0 >= engine.presenceTTLMs / 3 }) ?? true else { return false }
                state.presenceRefreshedAt = now
                return true
            }
            if refresh { try await refreshPresence(of: local, now: now, fanout: fanout) }
            let playback: Playback
            if let cached = fanout.cachedPlayback ?? fanout.cached()?.playback {
                playback = cached
            } else {
                playback = try await loadPlayback()
                fanout.remember(playback)
            }
            guard let active = playback.activeDevice else { return }
            if fanout.hasDevice(active) {
                let lock = lockValue(playback)
                let due = self.local.withLock { state in
                    state.renewed.map { $0.lock != lock || now - $0.at >= engine.renewMs } ?? true
                }
                guard due else { return }
                self.local.withLock { $0.renewed = (lock, now) }
                let renewed = try await redis.evaluate(
                    engine.renewScript, keys: [keys.lock], arguments: [.string(lockValue(playback)), .integer(engine.leaseTTLMs)])
                if renewed.int == 0 {
                    self.local.withLock { $0.renewed = nil }
                    // The lock is gone or not ours: take it again only if the state, read afresh, still names this holder.
                    let fresh = try await loadPlayback()
                    fanout.remember(fresh)
                    if fresh.activeDevice == active, lockValue(fresh) == lockValue(playback) {
                        _ = try await redis.send(["SET", .string(keys.lock), .string(lockValue(fresh)), "NX", "PX", .integer(engine.leaseTTLMs)])
                    }
                }
            } else if try await redis.send(["EXISTS", .string(keys.lock)]).int == 0 {
                logger.info("lease expired", metadata: ["device.id": .string(active), "lease.epoch": .stringConvertible(playback.epoch)])
                _ = await apply(
                    Submission(user: UserIdentity(userID: userID), input: .expire(device: active), device: nil),
                    cause: .init(op: "expired", device: active, request: nil))
            }
        } catch {
            logger.debug("lease upkeep failed", metadata: ["error": .string("\(error)")])
        }
    }

    /// Extends the presence of the local devices and checks the cached directory against who is
    /// online (a node that died leaves its devices to expire).
    private func refreshPresence(of devices: [String], now: Int64, fanout: UserFanout) async throws {
        let reply = try await redis.evaluate(
            engine.presenceScript, keys: [keys.online],
            arguments: [.integer(now), .integer(now + engine.presenceTTLMs)] + devices.map { .string($0) })
        guard case .array(let parts) = reply, parts.count == 2, let added = parts[0].int else { return }
        let online = Set((parts[1].array ?? []).compactMap(\.string))
        if added > 0 {
            // A local device new to the online set: Redis lost the user's keys (a restart without
            // persistence, a flush), so its directory entry is gone too and is written again, and
            // the state is read (and restored) again.
            try await registerLocalDevices()
            fanout.forgetCache()
            _ = try await cachedOrLoaded(fanout)
        } else if let directory = fanout.cached()?.directory, Set(directory.records.filter(\.value.online).keys) != online {
            fanout.remember(directory: try await loadDirectory())
        }
    }

    /// After a pub/sub outage: send the current state to local devices if they may have missed it.
    /// The command connection may still be reconnecting, so it tries for a while, without holding
    /// the user's gate between attempts.
    func recover() async {
        for attempt in 0..<20 {
            if await gate.run({ await recoverNow() }) { return }
            try? await Task.sleep(for: .milliseconds(100 * min(attempt + 1, 5)))
        }
    }

    /// False when the state could not be read.
    private func recoverNow() async -> Bool {
        guard let fanout else { return true }
        fanout.forgetCache()
        guard let (playback, _) = try? await cachedOrLoaded(fanout) else { return false }
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
    /// grant was lost while the channel was down).
    func regrant(_ device: String) async {
        await gate.run {
            guard let fanout, let playback = try? await loadPlayback(), playback.activeDevice == device else { return }
            fanout.remember(playback)
            fanout.grant(
                EncodedMessage(.leaseGranted(.init(epoch: playback.epoch, state: playback.playerState(includeQueue: true)))), to: device,
                epoch: playback.epoch)
        }
    }

    /// Writes this node's connected devices of the user into the directory again (after Redis lost it).
    private func registerLocalDevices() async throws {
        guard let fanout else { return }
        let now = self.now
        var arguments: [RedisArgument] = []
        var online: [RedisArgument] = []
        let identities = local.withLock { $0.identities }
        for device in fanout.connectedDevices {
            guard let identity = identities[device], let session = fanout.sessionID(of: device) else { continue }
            let stored = StoredDevice(name: identity.name, kind: identity.kind, lastSeen: now, session: session, node: engine.nodeID)
            arguments += [.string(device), .bytes(try Self.json(stored))]
            online += [.integer(now + engine.presenceTTLMs), .string(device)]
        }
        guard !arguments.isEmpty else { return }
        _ = try await redis.send(["HSET", .string(keys.devices)] + arguments)
        _ = try await redis.send(["ZADD", .string(keys.online)] + online)
    }

    /// Queues the current state for PostgreSQL now (shutdown).
    func writeSnapshot() async {
        guard let writer = engine.durability.writer else { return }
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

    private func loadPlayback() async throws -> Playback {
        if case .bulkString(let stored) = try await redis.send(["HGET", .string(keys.playback), "state"]) {
            return try JSONDecoder().decode(Playback.self, from: Data(stored.readableBytesView))
        }
        return try await restorePlayback()
    }

    /// Redis has no state for the user: a new user, or Redis lost it (restart without
    /// persistence, flush, eviction). Puts back the snapshot from PostgreSQL with a raised epoch
    /// and version (see `Durability.restore`), tells the user's devices, and reads again.
    private func restorePlayback() async throws -> Playback {
        try await registerLocalDevices()
        let restored: Playback
        var message: ByteBuffer?
        switch await engine.durability.restore(user: userID, now: now) {
        case .fresh:
            // The empty state is stored, so that the next read (the upkeep reads every tick) finds
            // it instead of coming here again.
            restored = .initial
        case .snapshot(let playback), .unknown(let playback):
            restored = playback
            let lease = playback.activeDevice.map {
                LeaseChange(epoch: playback.epoch, revoked: nil, granted: $0, reason: .transferred)
            }
            let event = PlaybackEvent(
                state: playback.playerState(includeQueue: true), queueChanged: true, lease: lease,
                cause: .init(op: "restored", device: nil, request: nil))
            message = BusMessage(event: event.prepared).encoded()
        }
        _ = try await redis.evaluate(
            engine.restoreScript, keys: [keys.playback, keys.lock],
            arguments: [
                .integer(restored.version), .integer(restored.epoch), .bytes(Self.json(restored)),
                .string(restored.activeDevice == nil ? "" : lockValue(restored)), .integer(engine.leaseTTLMs),
                .string(keys.channel), message.map { .bytes($0) } ?? .string(""),
            ])
        guard case .bulkString(let stored) = try await redis.send(["HGET", .string(keys.playback), "state"]) else {
            throw RedisError(.protocolError, "playback of \(userID) vanished right after it was restored")
        }
        let playback = try JSONDecoder().decode(Playback.self, from: Data(stored.readableBytesView))
        // The snapshot is of what Redis holds now: another node may have restored first, and a
        // restore that lost must not leave its own (never used) state in PostgreSQL.
        if playback.version > 0 { engine.durability.writer?.snapshot(user: userID, playback: playback, urgent: true) }
        return playback
    }

    private func loadDirectory() async throws -> DeviceDirectory {
        async let storedReply = redis.send(["HGETALL", .string(keys.devices)])
        async let onlineReply = redis.send(["ZRANGE", .string(keys.online), "0", "-1", "WITHSCORES"])
        let (stored, online) = try await (storedReply, onlineReply)
        let now = self.now
        var presence: [String: Int64] = [:]
        let onlineParts = online.array ?? []
        for index in stride(from: 0, to: onlineParts.count - 1, by: 2) {
            if let id = onlineParts[index].string, let expiry = onlineParts[index + 1].string.flatMap(Double.init) { presence[id] = Int64(expiry) }
        }
        var directory = DeviceDirectory()
        let storedParts = stored.array ?? []
        for index in stride(from: 0, to: storedParts.count - 1, by: 2) {
            guard let id = storedParts[index].string, case .bulkString(let json) = storedParts[index + 1],
                let device = try? JSONDecoder().decode(StoredDevice.self, from: Data(json.readableBytesView))
            else { continue }
            if now - device.lastSeen > engine.configuration.deviceRetentionMs, (presence[id] ?? 0) <= now { continue }
            directory.markOnline(id: id, name: device.name, kind: device.kind, now: device.lastSeen)
            if (presence[id] ?? 0) <= now { directory.markOffline(id: id, now: device.lastSeen) }
        }
        return directory
    }

    private func lockValue(_ playback: Playback) -> String { "\(playback.activeDevice ?? "")|\(playback.epoch)" }

    /// The playback as stored: written by hand (`PlaybackJSON`), it is on every commit.
    private static func json(_ playback: Playback) -> ByteBuffer {
        ByteBuffer(bytes: PlaybackJSON.encode(playback))
    }

    private static func json(_ value: some Encodable) throws -> ByteBuffer {
        ByteBuffer(bytes: try JSONEncoder().encode(value))
    }

    /// A success is written by hand (it is on every command with an id); errors are rare.
    private static func answerJSON(_ answer: Result<Receipt, PlaybackError>) -> ByteBuffer {
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
        return (try? json(StoredAnswer(answer))) ?? ByteBuffer(string: "{}")
    }

    /// Clients learn that storage is down; the details go to the log, not to them.
    private func unavailable(_ error: any Error) -> PlaybackError {
        logger.warning("storage unavailable", metadata: ["error": .string("\(error)")])
        return PlaybackError(.unavailable, "storage unavailable; try again")
    }

    private static func decodeAnswer(_ stored: ByteBuffer) throws -> Result<Receipt, PlaybackError> {
        try JSONDecoder().decode(StoredAnswer.self, from: Data(stored.readableBytesView)).result
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
}
