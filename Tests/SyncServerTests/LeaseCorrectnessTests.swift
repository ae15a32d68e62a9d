import Foundation
import Logging
import PlaybackCore
import PlaybackStore
@testable import PlaybackEngine
import RedisClient
import Synchronization
import Testing

/// A device connection the test holds by hand: it records what it is sent and, unlike a real
/// session, does not end when it is closed (as a connection whose close is still on its way).
final class HandSink: DeviceSink {
    let sessionID = UUID().uuidString
    private let closes = Mutex<[CloseCode]>([])

    func send(_ message: EncodedMessage) {}
    func close(_ code: CloseCode, reason: String) { closes.withLock { $0.append(code) } }
    var closedWith: [CloseCode] { closes.withLock { $0 } }
}

/// The storages' lease rules, and the races between nodes that only the engines see.
@Suite("lease correctness under races between nodes")
struct LeaseCorrectnessTests {
    static let welcome = WelcomeParameters(heartbeatMs: 15_000, limits: .init(maxMessageBytes: 65_536, messagesPerS: 50))

    static func storages() throws -> [(String, any PlaybackStorage)] {
        var storages: [(String, any PlaybackStorage)] = [("memory", MemoryStorage(configuration: EngineConfiguration(), clock: ServerClock.nowMs))]
        if ProcessInfo.processInfo.environment["PLAYBACK_REDIS_URL"] != nil {
            // A database of its own: the test servers' sweeps share database 0's lease deadlines (a
            // cluster has database 0 only: scripts/test runs this suite alone on it).
            var redis = try RedisConfiguration(url: EngineKind.redisURL)
            if !redis.isCluster { redis.database = 7 }
            // The suites run in parallel on two cores: as patient as the test servers are.
            redis.connectTimeoutMs = 10_000
            redis.commandTimeoutMs = 10_000
            storages.append(("redis", RedisStorage(configuration: redis, nodeID: "test", logger: Logger(label: "test"))))
        }
        return storages
    }

    static func playback(active device: String?, epoch: Int64, version: Int64) -> Playback {
        var playback = Playback.initial
        playback.activeDevice = device
        playback.epoch = epoch
        playback.version = version
        return playback
    }

    @Test func aReconnectNeverOverwritesTheLockOfANewerHolder() async throws {
        for (name, storage) in try Self.storages() {
            let user = "cas-\(UInt32.random(in: 0...UInt32.max))"
            let newer = Self.playback(active: "speaker", epoch: 6, version: 9)
            #expect(try await storage.restore(user: user, playback: newer, holder: "speaker|6", ttlMs: 10_000, frame: nil), "\(name)")
            // The phone held the lease at epoch 5; its reconnect read that state before the move.
            let late = try await storage.takeLease(user: user, holder: "phone|5", epoch: 5, ttlMs: 10_000, seen: 0)
            #expect(!late, "\(name): a holder of an older epoch is refused")
            #expect(try await storage.renewLease(user: user, holder: "speaker|6", epoch: 6, ttlMs: 10_000, seen: 1), "\(name): the newer holder keeps renewing")
            #expect(try await storage.takeLease(user: user, holder: "speaker|6", epoch: 6, ttlMs: 10_000, seen: 2), "\(name): its own lock is taken again")
            await storage.shutdown()
        }
    }

    @Test func aRoundTripIsWrittenOnlyIntoTheEntryOfTheConnectionThatMeasuredIt() async throws {
        for (name, storage) in try Self.storages() {
            let user = "rtt-\(UInt32.random(in: 0...UInt32.max))"
            let now = ServerClock.nowMs()
            func entry(_ session: String, rtt: Int?) -> StoredDevice {
                StoredDevice(name: "Phone", kind: .smartphone, lastSeen: now, session: session, node: "n", rttMs: rtt)
            }
            // The phone reconnected (session s2, maybe on another node) before s1's round trip was written.
            try await storage.register(user: user, entries: [("phone", entry("s2", rtt: nil))], presenceUntil: now + 60_000)
            try await storage.rewrite(user: user, entries: [("phone", "s1", entry("s1", rtt: 99))])
            var directory = try await storage.loadDirectory(user: user, now: now, retentionMs: 60_000)
            #expect(directory.records["phone"]?.rttMs == nil, "\(name): the newer connection's entry is kept")
            try await storage.rewrite(user: user, entries: [("phone", "s2", entry("s2", rtt: 7))])
            directory = try await storage.loadDirectory(user: user, now: now, retentionMs: 60_000)
            #expect(directory.records["phone"]?.rttMs == 7, "\(name)")
            #expect(directory.list(for: .initial).first?.rttMs == 7)
            await storage.shutdown()
        }
    }

    @Test func aPresenceRefreshInFlightDoesNotBringBackADeviceThatLeft() async throws {
        for (name, storage) in try Self.storages() {
            let user = "presence-\(UInt32.random(in: 0...UInt32.max))"
            let now = ServerClock.nowMs()
            let online = StoredDevice(name: "Phone", kind: .smartphone, lastSeen: now, session: "s1", node: "n")
            try await storage.register(user: user, entries: [("phone", online)], presenceUntil: now + 60_000)
            // The node looked at its connections (the phone on s1), then the phone left, then the refresh ran.
            let offline = StoredDevice(name: "Phone", kind: .smartphone, lastSeen: now, session: nil, node: nil)
            #expect(try await storage.leave(user: user, device: "phone", session: "s1", entry: offline, frame: BusMessage(devices: [])), "\(name)")
            let refreshed = try await storage.refreshPresence(user: user, devices: [("phone", "s1")], now: now, until: now + 60_000)
            #expect(refreshed.missing == 0 && !refreshed.online.contains("phone"), "\(name): it stays offline")
            let directory = try await storage.loadDirectory(user: user, now: now, retentionMs: 60_000)
            #expect(directory.records["phone"]?.online == false, "\(name)")
            // A device without an entry: the storage lost the user's keys.
            #expect(try await storage.refreshPresence(user: user, devices: [("laptop", "s2")], now: now, until: now + 60_000).missing == 1, "\(name)")
            await storage.shutdown()
        }
    }

    @Test func aLapsedLeaseTellsWhenItsHolderWasLastSeenAndIsSweptOnce() async throws {
        for (name, storage) in try Self.storages() {
            let user = "lapse-\(UInt32.random(in: 0...UInt32.max))"
            let playback = Self.playback(active: "phone", epoch: 3, version: 4)
            #expect(try await storage.restore(user: user, playback: playback, holder: "phone|3", ttlMs: 10_000, frame: nil))
            #expect(try await storage.leaseLapse(user: user, epoch: 3) == .held, "\(name)")
            // The holder is lost at 12,345: the grace period is short here.
            #expect(try await storage.renewLease(user: user, holder: "phone|3", epoch: 3, ttlMs: 50, seen: 12_345))
            try await Task.sleep(for: .milliseconds(120))
            #expect(try await storage.leaseLapse(user: user, epoch: 3) == .lapsed(seen: 12_345), "\(name)")
            #expect(try await storage.leaseLapse(user: user, epoch: 4) == .lapsed(seen: nil), "\(name): a record of another epoch is not used")
            var claimed: [String] = []
            for _ in 0..<20 where !claimed.contains(user) { claimed += try await storage.lapsedLeases(limit: 10_000, claimMs: 5_000, marginMs: 0) }
            #expect(claimed.contains(user), "\(name): the lapsed lease is due for a sweep")
            #expect(try await !storage.lapsedLeases(limit: 10_000, claimMs: 5_000, marginMs: 0).contains(user), "\(name): one claim at a time")
            await storage.shutdown()
        }
    }

    /// A device moved to node B; its old connection on node A ends with a clean close before A
    /// heard of the replacement: that close must not release the lease the device now holds on B.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["PLAYBACK_REDIS_URL"] != nil || ProcessInfo.processInfo.environment["CI"] == "true", "needs PLAYBACK_REDIS_URL"))
    func aLateCloseOfAReplacedConnectionLeavesTheLeaseWithTheNewOne() async throws {
        var configuration = EngineConfiguration()
        configuration.graceMs = 10_000
        // Not about overload: the suites load both cores, and a lagging bus would refuse the devices.
        configuration.maxBusLagMs = 0
        var redis = try RedisConfiguration(url: EngineKind.redisURL)
        redis.connectTimeoutMs = 10_000
        redis.commandTimeoutMs = 10_000
        let nodeA = RedisEngine(redis: redis, configuration: configuration)
        let nodeB = RedisEngine(redis: redis, configuration: configuration)
        let running = Task {
            await withDiscardingTaskGroup { group in
                group.addTask { await nodeA.run() }
                group.addTask { await nodeB.run() }
            }
        }
        await nodeA.waitUntilReady()
        await nodeB.waitUntilReady()
        let user = UserIdentity(userID: "moved-\(UInt32.random(in: 0...UInt32.max))")
        let hello = ClientMessage.Hello(device: .init(id: "phone", name: "Phone", kind: .smartphone))
        let old = HandSink()
        try await nodeA.connect(user: user, hello: hello, sink: old, welcome: Self.welcome)
        let played = await withCheckedContinuation { continuation in
            nodeA.submit(Submission(user: user, input: .command(.play(.init(trackID: "t0001", device: "phone"))), device: "phone")) {
                continuation.resume(returning: $0)
            }
        }
        #expect(try played.get().version == 1)
        try await nodeB.connect(user: user, hello: hello, sink: HandSink(), welcome: Self.welcome)
        await nodeA.disconnect(user: user, device: "phone", sessionID: old.sessionID, kind: .released)
        let (state, _) = try await nodeB.snapshot(user: user)
        #expect(state.activeDevice == "phone" && state.epoch == 1, "the new connection keeps the lease: \(state)")
        await nodeA.shutdown()
        await nodeB.shutdown()
        await running.value
    }
}

/// What PostgreSQL adds to restores and what it must not hold up.
@Suite("write-behind rows and restore ages")
struct WriteBehindIsolationTests {
    /// A snapshot still queued when Redis lost the user is as old as when it was taken: the
    /// restore jumps epoch and version by its age (another node may have handed out versions
    /// meanwhile), not by a constant.
    @Test func aRestoreFromAQueuedSnapshotJumpsByItsAge() async throws {
        let database = try await TestDatabase.create()
        defer { database.drop() }
        let clock = Atomic<Int64>(1_000_000)
        let store = PlaybackStore(settings: database.settings, logger: Logger(label: "test"))
        let writer = WriteBehind(store: store, logger: Logger(label: "test"), clock: { clock.load(ordering: .relaxed) })
        var playback = Playback.initial
        playback.epoch = 2
        playback.version = 10
        writer.snapshot(user: "aged", playback: playback, urgent: false)
        clock.store(1_060_000, ordering: .relaxed)
        let durability = Durability(writer: writer, logger: Logger(label: "test"), clock: { clock.load(ordering: .relaxed) })
        guard case .snapshot(let restored) = await durability.restore(user: "aged", now: 1_060_000) else {
            Issue.record("no restore from the queued snapshot")
            return
        }
        #expect(restored.version >= 10 + 60_000 && restored.epoch >= 2 + 60_000, "\(restored.epoch), \(restored.version)")
    }

    /// One row PostgreSQL refuses (a country that does not fit `char(2)`) is set aside and
    /// counted; the rows beside it are written and the writer stays healthy.
    @Test func aRowPostgreSQLRefusesIsSetAsideAndTheRestIsWritten() async throws {
        let database = try await TestDatabase.create()
        defer { database.drop() }
        let store = try await TestStore(settings: database.settings)
        defer { store.close() }
        store.writer.user(StoredUser(id: "bad", country: "SWE", tier: nil))
        store.writer.user(StoredUser(id: "good", country: "SE", tier: nil))
        var playback = Playback.initial
        playback.version = 3
        store.writer.snapshot(user: "good", playback: playback, urgent: true)
        #expect(await store.writer.flush())
        #expect(store.writer.isHealthy)
        #expect(try await database.sql("SELECT string_agg(id, ',' ORDER BY id) FROM users") == "good")
        #expect(try await database.sql("SELECT version FROM playback_snapshots WHERE user_id = 'good'") == "3")
        #expect(store.writer.setAside == 1, "this writer set one row aside (and counted it in playback_store_rejected_total)")
    }
}

/// What one user may keep in the storage: the same bounds on both engines.
@Suite("per-user bounds")
struct PerUserBoundsTests {
    /// Devices that came and went are forgotten, the ones seen longest ago first, past the device cap.
    @Test(arguments: EngineKind.allCases)
    func offlineDevicesArePrunedBeyondTheDeviceCap(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine, { $0.engine.maxDevicesPerUser = 3 }) { server in
            let user = UserIdentity(userID: "alice.\(server.namespace)")
            for index in 0..<6 {
                let (client, _) = try await server.device("gone-\(index)")
                try await client.sendClose(code: 1000)
                _ = await client.expectClose()
                // Gone for the storage too (its end is handled after the close), a while apart.
                let offline = try await eventually {
                    try await server.engine.snapshot(user: user).devices.first { $0.id == "gone-\(index)" }?.online == false
                }
                #expect(offline)
                try await Task.sleep(for: .milliseconds(5))
            }
            let (_, welcome) = try await server.device("latest")
            let listed = welcome.devices.map(\.id)
            #expect(listed.count == 3 && listed.contains("latest"), "\(listed)")
            #expect(listed.contains("gone-5") && listed.contains("gone-4"), "the most recently seen stay: \(listed)")
        }
    }

    /// A user with as many request ids remembered as it may gets `rate_limited` for a new one;
    /// the remembered ones still answer (none is forgotten inside the window).
    @Test(arguments: EngineKind.allCases)
    func requestIDsBeyondTheCapAreRefusedAndNoneIsForgotten(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine, { $0.engine.idempotencyCapacity = 3 }) { server in
            let (phone, _) = try await server.device("phone")
            var versions: [Int64] = []
            for index in 1...3 {
                guard case .ack(let ack) = try await phone.command("v\(index)", .volume(percent: index)) else {
                    Issue.record("v\(index) not acked")
                    return
                }
                versions.append(ack.version)
            }
            guard case .error(let refused) = try await phone.command("v4", .volume(percent: 4)) else {
                Issue.record("a fourth id was accepted")
                return
            }
            #expect(refused.code == .rateLimited && (refused.retryAfterMs ?? 0) > 0, "\(refused)")
            guard case .ack(let again) = try await phone.command("v1", .volume(percent: 1)) else {
                Issue.record("a remembered id was not answered")
                return
            }
            #expect(again.version == versions[0], "answered from memory, not applied again")
            let state = try await server.engine.snapshot(user: UserIdentity(userID: "alice.\(server.namespace)")).state
            #expect(state.volume == 3 && state.version == versions[2])
        }
    }
}

/// A device connection that records the types of what it is sent.
final class RecordingSink: DeviceSink {
    let sessionID = UUID().uuidString
    private let sent = Mutex<[String]>([])

    func send(_ message: EncodedMessage) { sent.withLock { $0.append(message.type) } }
    func close(_ code: CloseCode, reason: String) {}
    var types: [String] { sent.withLock { $0 } }
}

@Suite("delivery to local devices")
struct LocalDeliveryTests {
    /// A recovery (the bus reconnected) of a state a device was just welcomed with sends nothing:
    /// a device never gets the same version twice.
    @Test func aRecoveredStateIsNotSentAgainToADeviceWelcomedWithIt() throws {
        let fanout = UserFanout()
        let sink = RecordingSink()
        _ = fanout.beginWelcome(sink, device: "phone")
        fanout.finishWelcome(device: "phone", sessionID: sink.sessionID, welcome: EncodedMessage(.devices([])), version: 5, epoch: 1, active: false)
        var state = PlayerState()
        state.version = 5
        let recovered = PlaybackEvent(state: state, queueChanged: true, lease: nil, cause: .init(op: "recovered", device: nil, request: nil))
        _ = fanout.receive(BusMessage(event: recovered.prepared))
        #expect(sink.types == ["devices"], "only the welcome (a stand-in): \(sink.types)")
        state.version = 6
        _ = fanout.receive(BusMessage(event: PlaybackEvent(state: state, queueChanged: false, lease: nil, cause: .init(op: "seek", device: nil, request: nil)).prepared))
        #expect(sink.types == ["devices", "state"], "a newer version goes out: \(sink.types)")
    }
}
