import Foundation
import PlaybackEngine
import PlaybackStore
import Testing

/// The daemon stopped while a phone played and started again later, as `scripts/run` does it:
/// real processes, a redis-server of the test's own that comes back empty (`scripts/run` stops
/// its Redis without saving), PostgreSQL keeping the snapshot.
@Suite("a restart while a device plays")
struct RestartTests {
    @Test(.enabled(if: FaultCluster.binaryExists, "needs .build/debug/playback-syncd"))
    func nothingPlaysWhileNoDaemonRunsAndHistoryCountsOnlyTimeHeard() async throws {
        let database = try await TestDatabase.create()
        defer { database.drop() }
        let redis = try await offloaded { try RedisProcess() }
        let postgres = try PostgresSettings(url: TestDatabase.serverURL)
        let arguments = [
            "--engine", "redis", "--redis-url", redis.url, "--catalog", "builtin",
            "--postgres-url", "postgres://\(postgres.user)@\(postgres.host):\(postgres.port)/\(database.name)",
        ]
        let user = "restarted-\(UInt32.random(in: 0...UInt32.max))"
        let token = try await FaultCluster.token(user: user)

        let first = try await offloaded {
            let daemon = try DaemonProcess(arguments: arguments)
            try daemon.waitUntilHealthy()
            return daemon
        }
        let phone = try await TestClient.connect(port: first.port, token: token)
        _ = try await phone.hello("phone")
        let started = ContinuousClock.now
        let play = try await phone.acked("p", .play(.init(context: .init(kind: "album", id: "a05"), device: "phone")))
        try await Task.sleep(for: .milliseconds(1_500))
        let playedMs = Int64(started.duration(to: .now).components.seconds * 1_000) + 500
        // SIGTERM (the snapshot of every connected user is written), then Redis back empty.
        let exit = try await offloaded {
            first.signal(SIGTERM)
            let status = first.waitForExit(seconds: 15)
            redis.kill()
            try redis.start()
            return status
        }
        #expect(exit == 0)
        // Minutes in the report that found this; three seconds show the same.
        try await Task.sleep(for: .seconds(3))

        let second = try await offloaded {
            let daemon = try DaemonProcess(arguments: arguments)
            try daemon.waitUntilHealthy()
            return daemon
        }
        defer { second.stop() }
        let back = try await TestClient.connect(port: second.port, token: token)
        let welcome = try await back.hello("phone", lastSeen: .init(epoch: 1, version: play.version))
        #expect(welcome.state.track?.id == "t0041", "the same track: \(welcome.state.track?.id ?? "none")")
        #expect(!welcome.state.isPlaying && welcome.state.activeDevice == nil, "paused, nobody holding it: \(welcome.state)")
        let position = welcome.state.position(at: ServerClock.nowMs())
        #expect(position <= playedMs + 500, "at \(position) ms after about \(playedMs) ms of play")

        // Played on for a moment, then skipped: history has the time heard, not the downtime.
        _ = try await back.ackedOnceAvailable("r", .play(.init(device: "phone")))  // after the restore settles
        try await Task.sleep(for: .milliseconds(300))
        _ = try await back.acked("n", .next)
        let recorded = try await eventually(timeout: .seconds(10)) {
            try await Self.recentlyPlayed(port: second.port, token: token).contains { $0.track == "t0041" }
        }
        #expect(recorded, "the play of t0041 reached history")
        let items = try await Self.recentlyPlayed(port: second.port, token: token)
        let heard = items.filter { $0.track == "t0041" }.map(\.msPlayed).reduce(0, +)
        #expect(heard > 0 && heard <= playedMs + 1_300, "\(heard) ms heard of t0041 (played \(playedMs) ms, then 300 ms)")
        #expect(!items.contains { $0.reason == "finished" }, "nothing finished while no daemon ran: \(items)")
    }

    static func recentlyPlayed(port: Int, token: String) async throws -> [(track: String, msPlayed: Int64, reason: String)] {
        let output = try await offloaded {
            try runProgram("/usr/bin/curl", [
                "-sf", "-m", "5", "-H", "Authorization: Bearer \(token)", "http://127.0.0.1:\(port)/v1/me/player/recently-played?limit=20",
            ]).output
        }
        let object = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any] ?? [:]
        return (object["items"] as? [[String: Any]] ?? []).map { item in
            (((item["track"] as? [String: Any])?["id"] as? String) ?? "", (item["ms_played"] as? NSNumber)?.int64Value ?? 0,
             item["reason"] as? String ?? "")
        }
    }
}
