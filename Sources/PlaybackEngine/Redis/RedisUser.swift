import Foundation
import Logging
import Metrics
import NIOCore
import RedisClient

/// One user's work on this node, serialized: connects, disconnects, commits, lease upkeep.
actor RedisUser {
    nonisolated let userID: String
    let keys: RedisKeys
    let engine: RedisEngine
    let logger: Logger
    private var random = SystemRandomNumberGenerator()
    private static let maxAttempts = 8
    /// The actor is reentrant at every `await`; this gate runs one operation at a time, in
    /// arrival order, so one node never races itself for a user (conflicts only come from other nodes).
    private var busy = false
    private var queue: [CheckedContinuation<Void, Never>] = []

    /// Who this node's connected devices of the user are, to register them again if Redis loses them.
    private var identities: [String: ClientMessage.Hello.Device] = [:]

    /// The last playback read or written, with its JSON: a read that finds the same bytes skips decoding.
    private var cachedPlayback: (json: ByteBuffer, playback: Playback)?
    /// The fan-out's newest version when the upkeep last read the state: while nothing newer came
    /// on the channel, the upkeep uses the cached state instead of reading it again.
    private var upkeepReadAtVersion: Int64?
    /// When the upkeep last refreshed the presence of the local devices (server ms).
    private var presenceRefreshedAt: Int64?
    /// The same for the device directory's entries.
    private var cachedDevices: [String: (json: ByteBuffer, device: StoredDevice)] = [:]

    /// Nothing running or waiting.
    var isIdle: Bool { !busy && queue.isEmpty }

    private func serialized<T>(_ body: () async throws -> T) async rethrows -> T {
        if busy {
            await withCheckedContinuation { queue.append($0) }
        } else {
            busy = true
        }
        defer {
            if queue.isEmpty { busy = false } else { queue.removeFirst().resume() }
        }
        return try await body()
    }

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

    // MARK: Connections

    func connect(hello: ClientMessage.Hello, sink: any DeviceSink, welcome: WelcomeParameters) async throws(ConnectRefusal) {
        let outcome: Result<Void, ConnectRefusal> = await serialized {
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
            let before = try await loadDirectory()
            if !before.isOnline(device), before.onlineCount >= engine.configuration.maxDevicesPerUser {
                _ = fanout.detach(device: device, sessionID: sink.sessionID)
                await unsubscribeIfUnused()
                throw ConnectRefusal(
                    code: .policyViolation, reason: "too many devices connected (at most \(engine.configuration.maxDevicesPerUser))")
            }
            identities[device] = hello.device
            let stored = StoredDevice(name: hello.device.name, kind: hello.device.kind, lastSeen: now, session: sink.sessionID, node: engine.nodeID)
            _ = try await redis.send(["HSET", .string(keys.devices), .string(device), .bytes(try Self.json(stored))])
            _ = try await redis.send(["ZADD", .string(keys.online), .integer(now + engine.presenceTTLMs), .string(device)])
            try await publish(BusMessage(replace: .init(device: device, session: sink.sessionID)))
            let playback = try await loadPlayback()
            if playback.activeDevice == device {
                // Back within the grace period (or moved nodes): this node holds the lease now.
                _ = try await redis.send(["SET", .string(keys.lock), .string(lockValue(playback)), "PX", .integer(engine.leaseTTLMs)])
            }
            let directory = try await loadDirectory()
            let devices = directory.list(activeDevice: playback.activeDevice)
            let changed = hello.lastSeen.map { $0.epoch != playback.epoch || $0.version != playback.version } ?? true
            let message = EncodedMessage(.welcome(.init(
                session: sink.sessionID, serverTime: now, heartbeatMs: welcome.heartbeatMs, limits: welcome.limits,
                devices: devices, state: playback.playerState(includeQueue: true), changed: changed)))
            fanout.finishWelcome(
                device: device, sessionID: sink.sessionID, welcome: message, version: playback.version, epoch: playback.epoch,
                active: playback.activeDevice == device)
            try await publish(BusMessage(devices: devices, except: device))
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
        await serialized { await disconnectNow(device: device, sessionID: sessionID, kind: kind) }
    }

    private func disconnectNow(device: String, sessionID: String, kind: DisconnectKind) async {
        guard let fanout = engine.registry.fanout(for: userID), fanout.detach(device: device, sessionID: sessionID) else { return }
        if !fanout.hasDevice(device) { identities[device] = nil }
        await unsubscribeIfUnused()
        do {
            if let stored = try await loadStoredDevice(device), stored.session == sessionID {
                var offline = stored
                offline.lastSeen = now
                offline.session = nil
                _ = try await redis.send(["HSET", .string(keys.devices), .string(device), .bytes(try Self.json(offline))])
                _ = try await redis.send(["ZREM", .string(keys.online), .string(device)])
                engine.durability.deviceSeen(user: userID, id: device, name: stored.name, kind: stored.kind, at: offline.lastSeen)
            }
            let playback = try await loadPlayback()
            if playback.activeDevice == device {
                switch kind {
                case .released:
                    _ = await apply(.release, sender: device, cause: .init(op: "released", device: device, request: nil))
                case .lost:
                    // The grace period: the lease lives on for graceMs unless the device comes back.
                    _ = try await redis.evaluate(
                        engine.renewScript, keys: [keys.lock], arguments: [.string(lockValue(playback)), .integer(engine.configuration.graceMs)])
                case .replaced:
                    break
                }
            }
            try await publishDevices()
        } catch {
            logger.warning("disconnect bookkeeping failed", metadata: ["device.id": .string(device), "error": .string("\(error)")])
        }
    }

    private func unsubscribeIfUnused() async {
        if engine.registry.removeIfEmpty(userID) { try? await engine.subscriber.unsubscribe(keys.channel) }
    }

    // MARK: Commands

    func submit(_ submission: Submission) async -> Result<Receipt, PlaybackError> {
        await serialized { await submitNow(submission) }
    }

    private func submitNow(_ submission: Submission) async -> Result<Receipt, PlaybackError> {
        let remembered = submission.rememberedRequestID
        do {
            if let id = remembered, case .bulkString(let stored) = try await redis.send(["GET", .string(keys.request(id))]) {
                return try Self.decodeAnswer(stored)
            }
        } catch {
            return .failure(unavailable(error))
        }
        let cause = ServerMessage.Cause(op: submission.input.causeOp, device: submission.device, request: submission.requestID)
        return await apply(
            submission.input, sender: submission.device, country: submission.user.country, ifVersion: submission.ifVersion,
            cause: cause, requestID: remembered)
    }

    /// Runs the reducer on the current state and commits the change, retrying on conflicts.
    private func apply(
        _ input: Input, sender: String?, country: String? = nil, ifVersion: Int64? = nil, cause: ServerMessage.Cause,
        requestID: String? = nil
    ) async -> Result<Receipt, PlaybackError> {
        for _ in 0..<Self.maxAttempts {
            do {
                async let loadedState = loadPlayback()
                async let loadedDirectory = loadDirectory()
                let (playback, directory) = try await (loadedState, loadedDirectory)
                let environment = ReducerEnvironment(
                    now: now, sender: sender, country: country, devices: directory.presence, randomSeed: random.next())
                let transition: Transition
                do {
                    transition = try engine.reducer.apply(input, to: playback, environment: environment, ifVersion: ifVersion)
                } catch {
                    try await remember(.failure(error), requestID: requestID)
                    return .failure(error)
                }
                let receipt = Receipt(version: transition.playback.version, entry: transition.entry, changed: transition.changed)
                guard transition.changed else {
                    try await remember(.success(receipt), requestID: requestID)
                    return .success(receipt)
                }
                switch try await commit(transition, expected: playback.version, cause: cause, requestID: requestID, answer: receipt) {
                case .committed:
                    engine.durability.committed(user: userID, transition: transition) { directory.records[$0]?.kind.rawValue }
                    if let lease = transition.lease {
                        Counter(label: "playback_lease_changes_total", dimensions: [("reason", lease.reason.rawValue)]).increment()
                        logger.info("lease moved", metadata: [
                            "lease.epoch": .stringConvertible(lease.epoch), "lease.reason": .string(lease.reason.rawValue),
                            "lease.from": .string(lease.revoked ?? "-"), "lease.to": .string(lease.granted ?? "-"),
                        ])
                        try await publishDevices(activeDevice: transition.playback.activeDevice)
                    }
                    return .success(receipt)
                case .conflict:
                    Counter(label: "playback_commit_conflicts_total").increment()
                    continue
                case .alreadyAnswered(let answer):
                    return answer
                }
            } catch {
                return .failure(unavailable(error))
            }
        }
        return .failure(PlaybackError(.unavailable, "too many concurrent changes; try again"))
    }

    private enum CommitResult {
        case committed
        case conflict
        case alreadyAnswered(Result<Receipt, PlaybackError>)
    }

    private func commit(
        _ transition: Transition, expected: Int64, cause: ServerMessage.Cause, requestID: String?, answer: Receipt
    ) async throws -> CommitResult {
        let playback = transition.playback
        let leaseOp = transition.lease == nil ? "keep" : (playback.activeDevice == nil ? "del" : "set")
        let stateJSON = Self.json(playback)
        let message = BusMessage(event: PlaybackEvent(transition, cause: cause).prepared)
        let reply = try await redis.evaluate(
            engine.commitScript, keys: [keys.playback, keys.lock, keys.request(requestID ?? "-")],
            arguments: [
                .integer(expected), .integer(playback.version), .integer(playback.epoch), .bytes(stateJSON),
                .string(leaseOp), .string(lockValue(playback)), .integer(engine.leaseTTLMs), .string(keys.channel),
                .bytes(try message.encoded()), .string(requestID == nil ? "0" : "1"),
                .bytes(try Self.json(StoredAnswer(.success(answer)))), .integer(engine.configuration.idempotencyWindowMs),
            ])
        guard case .array(let parts) = reply, let status = parts.first?.int else {
            throw RedisError(.protocolError, "unexpected commit reply \(reply)")
        }
        switch status {
        case 1:
            cachedPlayback = (stateJSON, playback)
            return .committed
        case 2:
            guard case .bulkString(let stored) = parts[1] else { throw RedisError(.protocolError, "no stored answer") }
            return .alreadyAnswered(try Self.decodeAnswer(stored))
        default: return .conflict
        }
    }

    /// Records the final answer of a request that changed nothing (changes record it in the commit).
    private func remember(_ answer: Result<Receipt, PlaybackError>, requestID: String?) async throws {
        guard let requestID else { return }
        if case .failure(let error) = answer, error.code.isTransient { return }
        _ = try await redis.send([
            "SET", .string(keys.request(requestID)), .bytes(try Self.json(StoredAnswer(answer))), "NX", "PX",
            .integer(engine.configuration.idempotencyWindowMs),
        ])
    }

    func snapshot() async throws(PlaybackError) -> (state: PlayerState, devices: [DeviceInfo]) {
        do {
            let playback = try await loadPlayback()
            return (playback.playerState(includeQueue: true), try await loadDirectory().list(activeDevice: playback.activeDevice))
        } catch {
            throw unavailable(error)
        }
    }

    // MARK: Upkeep

    /// Renews the lease of a local holder, refreshes presence, and expires a lease whose lock is
    /// gone (its node died, or its device did not come back within the grace period).
    func maintain() async {
        await serialized { await maintainNow() }
    }

    private func maintainNow() async {
        guard let fanout = engine.registry.fanout(for: userID) else { return }
        do {
            let local = fanout.connectedDevices
            let now = self.now
            if !local.isEmpty, presenceRefreshedAt.map({ now - $0 >= engine.presenceTTLMs / 3 }) ?? true {
                presenceRefreshedAt = now
                let expiry = now + engine.presenceTTLMs
                let added = try await redis.send(["ZADD", .string(keys.online)] + local.flatMap { [RedisArgument.integer(expiry), .string($0)] })
                // A local device new to the online set: Redis lost the user's keys (a restart without
                // persistence, a flush), so its directory entry is gone too and is written again, and
                // the state is read (and restored) below.
                if (added.int ?? 0) > 0 {
                    upkeepReadAtVersion = nil
                    try await registerLocalDevices()
                }
            }
            // Every change comes through the channel: while nothing new came, the state read last time holds.
            let channelVersion = fanout.latestVersion
            let playback: Playback
            if let cached = cachedPlayback, upkeepReadAtVersion == channelVersion {
                playback = cached.playback
            } else {
                playback = try await loadPlayback()
                upkeepReadAtVersion = channelVersion
            }
            guard let active = playback.activeDevice else { return }
            if fanout.hasDevice(active) {
                let renewed = try await redis.evaluate(
                    engine.renewScript, keys: [keys.lock], arguments: [.string(lockValue(playback)), .integer(engine.leaseTTLMs)])
                if renewed.int == 0 {
                    // The lock is gone or not ours: take it again only if the state, read afresh, still names this holder.
                    let fresh = try await loadPlayback()
                    upkeepReadAtVersion = channelVersion
                    if fresh.activeDevice == active, lockValue(fresh) == lockValue(playback) {
                        _ = try await redis.send(["SET", .string(keys.lock), .string(lockValue(fresh)), "NX", "PX", .integer(engine.leaseTTLMs)])
                    }
                }
            } else if try await redis.send(["EXISTS", .string(keys.lock)]).int == 0 {
                upkeepReadAtVersion = nil
                logger.info("lease expired", metadata: ["device.id": .string(active), "lease.epoch": .stringConvertible(playback.epoch)])
                _ = await apply(.expire(device: active), sender: nil, cause: .init(op: "expired", device: active, request: nil))
            }
        } catch {
            logger.debug("lease upkeep failed", metadata: ["error": .string("\(error)")])
        }
    }

    /// After a pub/sub outage: send the current state to local devices if they may have missed it.
    /// The command connection may still be reconnecting, so it tries for a while, without holding
    /// the user's gate between attempts.
    func recover() async {
        for attempt in 0..<20 {
            if await serialized({ await recoverNow() }) { return }
            try? await Task.sleep(for: .milliseconds(100 * min(attempt + 1, 5)))
        }
    }

    /// False when the state could not be read.
    private func recoverNow() async -> Bool {
        guard let fanout = engine.registry.fanout(for: userID) else { return true }
        guard let playback = try? await loadPlayback() else { return false }
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
        await serialized {
            guard let fanout = engine.registry.fanout(for: userID), let playback = try? await loadPlayback(),
                playback.activeDevice == device
            else { return }
            fanout.grant(
                EncodedMessage(.leaseGranted(.init(epoch: playback.epoch, state: playback.playerState(includeQueue: true)))), to: device,
                epoch: playback.epoch)
        }
    }

    /// Writes this node's connected devices of the user into the directory again (after Redis lost it).
    private func registerLocalDevices() async throws {
        guard let fanout = engine.registry.fanout(for: userID) else { return }
        let now = self.now
        var arguments: [RedisArgument] = []
        var online: [RedisArgument] = []
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
        guard let writer = engine.durability.writer, let playback = try? await loadPlayback(), playback.version > 0 else { return }
        writer.snapshot(user: userID, playback: playback, urgent: true)
    }

    // MARK: Storage

    private func loadPlayback() async throws -> Playback {
        if case .bulkString(let stored) = try await redis.send(["HGET", .string(keys.playback), "state"]) {
            if let cached = cachedPlayback, cached.json == stored { return cached.playback }
            let playback = try JSONDecoder().decode(Playback.self, from: Data(stored.readableBytesView))
            cachedPlayback = (stored, playback)
            return playback
        }
        cachedPlayback = nil
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
            message = try BusMessage(event: event.prepared).encoded()
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

    private func loadStoredDevice(_ device: String) async throws -> StoredDevice? {
        guard case .bulkString(let stored) = try await redis.send(["HGET", .string(keys.devices), .string(device)]) else { return nil }
        return try JSONDecoder().decode(StoredDevice.self, from: Data(stored.readableBytesView))
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
                let device = decodeDevice(id, json)
            else { continue }
            if now - device.lastSeen > engine.configuration.deviceRetentionMs, (presence[id] ?? 0) <= now { continue }
            directory.markOnline(id: id, name: device.name, kind: device.kind, now: device.lastSeen)
            if (presence[id] ?? 0) <= now { directory.markOffline(id: id, now: device.lastSeen) }
        }
        return directory
    }

    private func decodeDevice(_ id: String, _ json: ByteBuffer) -> StoredDevice? {
        if let cached = cachedDevices[id], cached.json == json { return cached.device }
        guard let device = try? JSONDecoder().decode(StoredDevice.self, from: Data(json.readableBytesView)) else { return nil }
        if cachedDevices.count > 4 * engine.configuration.maxDevicesPerUser { cachedDevices.removeAll() }
        cachedDevices[id] = (json, device)
        return device
    }

    private func publish(_ message: BusMessage) async throws {
        _ = try await redis.send(["PUBLISH", .string(keys.channel), .bytes(try message.encoded())])
    }

    private func publishDevices(activeDevice: String?? = nil) async throws {
        let active: String?
        if let activeDevice { active = activeDevice } else { active = try await loadPlayback().activeDevice }
        try await publish(BusMessage(devices: try await loadDirectory().list(activeDevice: active)))
    }

    private func lockValue(_ playback: Playback) -> String { "\(playback.activeDevice ?? "")|\(playback.epoch)" }

    /// The playback as stored: written by hand (`PlaybackJSON`), it is on every commit.
    private static func json(_ playback: Playback) -> ByteBuffer {
        ByteBuffer(bytes: PlaybackJSON.encode(playback))
    }

    private static func json(_ value: some Encodable) throws -> ByteBuffer {
        ByteBuffer(bytes: try JSONEncoder().encode(value))
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
