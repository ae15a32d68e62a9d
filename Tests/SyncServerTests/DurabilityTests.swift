import Foundation
import PlaybackCore
import PlaybackEngine
import PlaybackStore
import Testing

/// PostgreSQL behind the engines: migrations, the catalog and licensing, snapshots written
/// behind, recovery when Redis loses a user, play history, and PostgreSQL outages.
/// Each test has a database of its own on the server `scripts/test` starts; the outage and
/// Redis-loss tests run servers of their own so they can stop them.
@Suite("PostgreSQL durability")
struct DurabilityTests {
    /// A scratch database with the schema and the demo catalog, and a daemon on it.
    func withDaemon<T>(
        engine: EngineKind = .memory, redisURL: String? = nil, snapshotIntervalMs: Int64 = 1_000,
        _ body: (TestServer, TestStore, TestDatabase) async throws -> T
    ) async throws -> T {
        let database = try await TestDatabase.create()
        defer { database.drop() }
        let store = try await TestStore(settings: database.settings, snapshotIntervalMs: snapshotIntervalMs)
        defer { store.close() }
        let catalog = try await store.seededCatalog()
        let server = try await TestServer.start(engine: engine, durability: store.durability, catalog: catalog, redisURL: redisURL)
        do {
            let result = try await body(server, store, database)
            await server.stop()
            return result
        } catch {
            await server.stop()
            throw error
        }
    }

    @Test func migrationsRunFromAnEmptyDatabaseOnce() async throws {
        let database = try await TestDatabase.create()
        defer { database.drop() }
        let store = try await TestStore(settings: database.settings, migrate: false)
        defer { store.close() }
        #expect(try await store.store.migrate() == [1])
        #expect(try await store.store.migrate() == [], "a second start applies nothing")
        let tables = try await database.sql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'")
        #expect(tables == "context_tracks,contexts,devices,play_history,playback_snapshots,schema_migrations,track_licenses,tracks,users")
    }

    @Test func theCatalogRoundTripsThroughPostgres() async throws {
        let database = try await TestDatabase.create()
        defer { database.drop() }
        let store = try await TestStore(settings: database.settings)
        defer { store.close() }
        let catalog = try await store.seededCatalog()
        let demo = DemoCatalog.shared
        #expect(catalog.trackCount == DemoCatalog.trackCount)
        #expect(catalog.track(id: "t0042") == demo.track(id: "t0042"))
        #expect(catalog.tracks(in: .init(kind: "album", id: "a03"))?.map(\.id) == demo.tracks(in: .init(kind: "album", id: "a03"))?.map(\.id))
        #expect(catalog.tracks(in: .init(kind: "playlist", id: "p2"))?.map(\.id) == demo.tracks(in: .init(kind: "playlist", id: "p2"))?.map(\.id))
        #expect(!catalog.isLicensed(trackID: "t0013", country: "US") && catalog.isLicensed(trackID: "t0013", country: "SE"))
        #expect(catalog.isLicensed(trackID: "t0014", country: "US"))
        #expect(try await database.sql("SELECT string_agg(country, ',' ORDER BY country) FROM track_licenses WHERE track_id = 't0063'") == "NO,SE")
    }

    @Test(arguments: EngineKind.allCases)
    func unlicensedTracksAreRefusedByTokenCountryOrUsersTable(engine: EngineKind) async throws {
        try await withDaemon(engine: engine) { server, _, database in
            // The token says US.
            let american = try await server.connect("amy", country: "US")
            _ = try await american.hello("phone")
            guard case .error(let refused) = try await american.command("c1", .play(.init(trackID: "t0013"))) else {
                Issue.record("t0013 played in the US")
                return
            }
            #expect(refused.code == .unavailableInRegion)
            #expect(try await server.engine.snapshot(user: .init(userID: "amy.\(server.namespace)")).state.version == 0, "nothing changed")
            // No country in the token: the users table decides.
            _ = try await database.sql("INSERT INTO users (id, country) VALUES ('bo.\(server.namespace)', 'US'), ('siv.\(server.namespace)', 'SE')")
            let bo = try await server.connect("bo")
            _ = try await bo.hello("phone")
            guard case .error(let byTable) = try await bo.command("c1", .play(.init(trackID: "t0063"))) else {
                Issue.record("t0063 played for a US user of the users table")
                return
            }
            #expect(byTable.code == .unavailableInRegion)
            let siv = try await server.connect("siv")
            _ = try await siv.hello("phone")
            guard case .ack = try await siv.command("c1", .play(.init(trackID: "t0063"))) else {
                Issue.record("t0063 refused in Sweden")
                return
            }
            // A context skips what is not licensed: album a02 starts at t0011, t0013 is left out.
            _ = try await bo.acked("c2", .play(.init(context: .init(kind: "album", id: "a02"))))
            let queue = try await server.engine.snapshot(user: .init(userID: "bo.\(server.namespace)")).state.queue ?? []
            #expect(!queue.contains { $0.track.id == "t0013" } && queue.contains { $0.track.id == "t0014" })
        }
    }

    @Test func snapshotsAreCoalescedButLeaseChangesAreWrittenAtOnce() async throws {
        try await withDaemon(snapshotIntervalMs: 2_000) { server, store, database in
            let (phone, _) = try await server.device("phone")
            let user = "alice.\(server.namespace)"
            let started = ContinuousClock.now
            _ = try await phone.acked("p", .play(.init(context: .init(kind: "album", id: "a01"))))
            // The lease moved: written at the next tick, long before the interval.
            #expect(try await eventually(timeout: .milliseconds(1_500)) {
                try await database.sql("SELECT version FROM playback_snapshots WHERE user_id = '\(user)'") == "1"
            })
            let afterLease = store.writer.snapshotsWritten
            let changing = ContinuousClock.now
            for percent in 0..<20 { _ = try await phone.command("v\(percent)", .volume(percent: percent)) }
            let changed = ContinuousClock.now
            if changed - started < .milliseconds(1_800) {
                #expect(try await database.sql("SELECT version FROM playback_snapshots WHERE user_id = '\(user)'") == "1", "coalesced, not written yet")
            }
            #expect(try await eventually(timeout: .seconds(5)) {
                try await database.sql("SELECT version FROM playback_snapshots WHERE user_id = '\(user)'") == "21"
            })
            // One write per interval while the changes came in, and the last one after them:
            // 20 changes within a second make at most two (a slow machine may take longer for them).
            let intervals = Int((changed - changing) / .seconds(2)) + 2
            #expect(store.writer.snapshotsWritten - afterLease <= intervals, "20 changes make at most \(intervals) writes")
            let state = try await database.sql("SELECT state->>'active_device', state->'current'->'track'->>'id', state->>'volume' FROM playback_snapshots WHERE user_id = '\(user)'")
            #expect(state == "phone|t0001|19")
        }
    }

    @Test(arguments: EngineKind.allCases)
    func playHistoryRecordsSkippedTransferredAndFinishedPlays(engine: EngineKind) async throws {
        try await withDaemon(engine: engine) { server, store, database in
            let (phone, _) = try await server.device("phone", kind: .smartphone)
            let (laptop, _) = try await server.device("laptop", kind: .computer)
            let started = ContinuousClock.now
            _ = try await phone.acked("p", .play(.init(context: .init(kind: "album", id: "a02"), device: "phone")))
            try await Task.sleep(for: .milliseconds(300))
            _ = try await phone.acked("n", .next)  // t0011 skipped on the phone
            try await Task.sleep(for: .milliseconds(300))
            _ = try await phone.acked("t", .transfer(device: "laptop", play: nil))  // t0012 moves
            guard case .leaseGranted(let grant) = try await laptop.expect("lease_granted") else { return }
            try await Task.sleep(for: .milliseconds(300))
            try await laptop.send(.trackEnded(.init(epoch: grant.epoch, trackID: "t0012")))  // t0012 finished on the laptop
            _ = try await laptop.state { $0.track?.id == "t0013" || $0.track?.id == "t0014" }
            // The state can reach the laptop (through the bus) a moment before the committing
            // node has queued the play it ended: ask until it is there.
            var history = ServerMessage.History(id: nil, items: [])
            var seen: [String] = []
            for attempt in 0..<20 where seen.count < 3 {
                if attempt > 0 { try await Task.sleep(for: .milliseconds(100)) }
                guard case .history(let answer) = try await phone.history("h\(attempt)", limit: 10) else {
                    Issue.record("no history answer")
                    return
                }
                history = answer
                seen = history.items.map { "\($0.track.id) \($0.reason.rawValue) \($0.device?.id ?? "-")" }
            }
            #expect(seen == ["t0012 finished laptop", "t0012 transferred phone", "t0011 skipped phone"])
            // Each play lasted at least its 300 ms pause and at most the whole sequence.
            let elapsedMs = milliseconds(since: started)
            #expect(history.items.allSatisfy { $0.msPlayed >= 250 && $0.msPlayed <= elapsedMs }, "\(history.items.map(\.msPlayed)) within \(elapsedMs) ms")
            #expect(history.items.first?.context == .init(kind: "album", id: "a02"))
            _ = await store.writer.flush()
            let rows = try await database.sql("""
                SELECT string_agg(track_id || ' ' || end_reason || ' ' || device_kind || ' ' || coalesce(context, '-'), ',' ORDER BY id)
                FROM play_history WHERE user_id = 'alice.\(server.namespace)'
                """)
            #expect(rows == "t0011 skipped smartphone album:a02,t0012 transferred smartphone album:a02,t0012 finished computer album:a02")
            let rest = try await server.httpResponse(
                "/v1/me/player/recently-played?limit=2", headers: ["Authorization": "Bearer \(try await server.token("alice"))"])
            let body = try JSONSerialization.jsonObject(with: Data(rest.body.utf8)) as? [String: Any]
            let items = body?["items"] as? [[String: Any]] ?? []
            #expect(rest.status == 200 && items.count == 2)
            #expect((items.first?["track"] as? [String: Any])?["id"] as? String == "t0012" && items.first?["reason"] as? String == "finished")
        }
    }

    @Test func aRestartedMemoryEngineResumesFromItsSnapshot() async throws {
        let database = try await TestDatabase.create()
        defer { database.drop() }
        let store = try await TestStore(settings: database.settings)
        defer { store.close() }
        let catalog = try await store.seededCatalog()
        let namespace = "restart\(UInt32.random(in: 0...UInt32.max))"
        let first = try await TestServer.start(namespace: namespace, durability: store.durability, catalog: catalog)
        let (phone, _) = try await first.device("phone")
        let startedAt = ServerClock.nowMs()
        _ = try await phone.acked("p", .play(.init(context: .init(kind: "album", id: "a04"), device: "phone")))
        let last = try await phone.acked("q", .queueAdd(trackID: "t0200", at: .next))
        let playedFor = ServerClock.nowMs() - startedAt
        await first.stop()
        #expect(await store.writer.flush())
        // Nobody listens while no daemon runs.
        try await Task.sleep(for: .seconds(2))

        let second = try await TestServer.start(namespace: namespace, durability: store.durability, catalog: catalog)
        defer { Task { await second.stop() } }
        let client = try await second.connect()
        let welcome = try await client.hello("phone", lastSeen: .init(epoch: 1, version: last.version))
        #expect(welcome.state.track?.id == "t0031" && welcome.state.queue?.first?.track.id == "t0200")
        #expect(welcome.state.version > last.version && welcome.state.epoch > 1, "restored above everything handed out")
        #expect(welcome.changed)
        // Paused where it was when the daemon stopped, nobody holding it: the two seconds without a
        // daemon did not play.
        #expect(!welcome.state.isPlaying && welcome.state.activeDevice == nil)
        #expect(welcome.state.positionMs <= playedFor + 500, "position \(welcome.state.positionMs) ms after \(playedFor) ms of play")
        // And history credits only the time heard: resumed, then skipped at once.
        _ = try await client.acked("r", .play(.init(device: "phone")))
        _ = try await client.acked("n", .next)
        #expect(await store.writer.flush())
        let heard = try await second.engine.recentlyPlayed(user: .init(userID: "alice.\(namespace)"), limit: 5)
        let first31 = try #require(heard.first { $0.track.id == "t0031" })
        #expect(first31.msPlayed < playedFor + 1_000, "\(first31.msPlayed) ms heard of \(playedFor) ms played before the stop")
    }

    @Test func losingRedisRestoresPlaybackWithRisingEpochsAndVersions() async throws {
        let redis = try await offloaded { try RedisProcess() }
        try await withDaemon(engine: .redis, redisURL: redis.url) { server, store, database in
            let (phone, _) = try await server.device("phone")
            let (laptop, _) = try await server.device("laptop")
            _ = try await phone.acked("p", .play(.init(context: .init(kind: "album", id: "a05"), device: "phone")))
            _ = try await phone.acked("q", .queueAdd(trackID: "t0250", at: .end))
            let before = try await laptop.acked("v", .volume(percent: 30))
            let user = "alice.\(server.namespace)"
            #expect(try await eventually { try await database.sql("SELECT version FROM playback_snapshots WHERE user_id = '\(user)'") == "\(before.version)" })

            try await offloaded { redis.kill() }
            try await offloaded { try redis.start() }  // no persistence: Redis comes back empty

            // Commands fail while the client reconnects, then succeed on the restored playback.
            var after: ServerMessage.Ack?
            for attempt in 0..<100 where after == nil {
                if case .ack(let ack) = try await laptop.command("n\(attempt)", .next) { after = ack } else { try await Task.sleep(for: .milliseconds(100)) }
            }
            guard let after else {
                Issue.record("no command succeeded after the Redis restart")
                return
            }
            #expect(after.version > before.version)
            let snapshot = try await server.engine.snapshot(user: .init(userID: user)).state
            #expect(snapshot.epoch > 1 && snapshot.volume == 30 && snapshot.activeDevice == "phone")
            #expect(snapshot.track?.id == "t0250", "the queue survived: next played the queued track")
            // The phone learns its new epoch and may report with it.
            var newest: ServerMessage.LeaseGranted?
            while newest == nil || newest?.epoch == 1 {
                guard case .leaseGranted(let next) = try await phone.expect("lease_granted") else { return }
                newest = next
            }
            let grant = try #require(newest)
            #expect(grant.epoch == snapshot.epoch)
            try await phone.send(.report(.init(id: "r", epoch: grant.epoch, positionMs: 10_000, isPlaying: true, trackID: snapshot.track?.id ?? "")))
            _ = try await phone.state { $0.positionMs == 10_000 }
            // Every device saw versions only rise.
            for client in [phone, laptop] {
                var versions: [Int64] = []
                while let event = await client.next(timeout: .milliseconds(200)) {
                    if case .message(.state(let state)) = event { versions.append(state.state.version) }
                }
                #expect(versions == versions.sorted() && Set(versions).count == versions.count)
            }
            _ = store
        }
    }

    @Test func aPostgresOutageNeverBlocksCommandsAndWritesCatchUp() async throws {
        let postgres = try await offloaded { try PostgresProcess() }
        defer { postgres.destroy() }
        // A statement waits up to 5 s: a command that waited for PostgreSQL would take that long.
        let store = try await TestStore(settings: try postgres.settings, timeout: .seconds(5))
        defer { store.close() }
        let catalog = try await store.seededCatalog()
        let server = try await TestServer.start(durability: store.durability, catalog: catalog)
        defer { Task { await server.stop() } }
        let user = "alice.\(server.namespace)"
        let (phone, _) = try await server.device("phone")
        _ = try await phone.acked("p", .play(.init(context: .init(kind: "album", id: "a06"), device: "phone")))
        #expect(try await eventually { (try? await store.store.loadSnapshot(user: user))??.version == 1 })

        try await offloaded { try postgres.stop() }
        var last: Int64 = 0
        var slowest: Duration = .zero
        for index in 0...10 {
            let started = ContinuousClock.now
            let command: Command = index < 10 ? .volume(percent: index) : .next
            guard case .ack(let ack) = try await phone.command("c\(index)", command) else {
                Issue.record("a command failed while PostgreSQL was down")
                return
            }
            slowest = max(slowest, ContinuousClock.now - started)
            last = ack.version
        }
        #expect(slowest < .seconds(5), "no command waited for PostgreSQL: the slowest took \(slowest)")
        #expect(try await eventually(timeout: .seconds(20)) { !store.writer.isHealthy })
        let ready = try await server.http("/readyz")
        #expect(ready.status == 200 && ready.body.contains(#""status":"degraded""#) && ready.body.contains("postgres"))
        #expect(store.writer.pending.snapshots == 1 && store.writer.pending.plays >= 1)

        try await offloaded { try postgres.start() }
        #expect(try await eventually(timeout: .seconds(10)) { (try? await store.store.loadSnapshot(user: user))??.version == last })
        #expect(try await eventually { store.writer.isHealthy })
        #expect(try await server.http("/readyz").body.contains(#""status":"ready""#))
        #expect(try await store.store.recentPlays(user: user, limit: 5).first?.record.reason == .skipped)
    }
}
