import Foundation
import PlaybackCore
import PlaybackStore
import RedisClient
import Testing

/// A user nobody uses leaves Redis once PostgreSQL holds their snapshot, and comes back from it:
/// a real daemon with a short `--idle-ttl-ms`, a redis-server of the test's own, PostgreSQL.
@Suite("idle users leave Redis")
struct IdleTests {
    static let idleTTLMs: Int64 = 1_500

    @Test(.enabled(if: FaultCluster.binaryExists, "needs .build/debug/playback-syncd"))
    func anIdleUsersKeysExpireAndTheNextDeviceFindsThePlaybackAsItWas() async throws {
        try await Self.withDaemon { daemon, redis in
            let user = "idle-\(UInt32.random(in: 0...UInt32.max))"
            let token = try await FaultCluster.token(user: user)
            let phone = try await TestClient.connect(port: daemon.port, token: token)
            _ = try await phone.hello("phone")
            _ = try await phone.acked("p", .play(.init(context: .init(kind: "album", id: "a03"), device: "phone")))
            _ = try await phone.acked("q", .queueAdd(trackID: "t0123", at: .next))
            let paused = try await phone.acked("s", .pause)
            // A clean close releases the lease: a new version, whose snapshot lets the user go.
            await phone.connection.close()
            let gone = try await eventually(timeout: .seconds(15)) { try Self.redis(redis, "EXISTS", "pb:{u:\(user)}") == "0" }
            #expect(gone, "the playback left Redis")
            #expect(try Self.redis(redis, "EXISTS", "dev:{u:\(user)}") == "0", "and the device directory with it")

            let back = try await TestClient.connect(port: daemon.port, token: token)
            let welcome = try await back.hello("phone", lastSeen: .init(epoch: 1, version: paused.version))
            #expect(welcome.state.context?.id == "a03" && welcome.state.queue?.first?.track.id == "t0123", "\(welcome.state)")
            #expect(!welcome.state.isPlaying && welcome.state.version > paused.version && welcome.state.epoch >= 1, "\(welcome.state)")
            #expect(welcome.devices.contains { $0.id == "phone" })
            // Its first command is taken at once: an idle user's restore has nothing to wait for.
            _ = try await back.acked("v", .volume(percent: 30))
            // Back in Redis, and not leaving while a device is there.
            try await Task.sleep(for: .milliseconds(Self.idleTTLMs + 1_000))
            #expect(try Self.redis(redis, "EXISTS", "pb:{u:\(user)}") == "1")
        }
    }

    /// Devices come back around the moment their user's keys expire: whichever wins, nothing is
    /// lost and no version goes back.
    @Test(.enabled(if: FaultCluster.binaryExists, "needs .build/debug/playback-syncd"))
    func aDeviceReturningAsTheKeysExpireLosesNothing() async throws {
        try await Self.withDaemon { daemon, redis in
            let users = (0..<12).map { "race-\($0)-\(UInt32.random(in: 0...UInt32.max))" }
            var last: [String: Int64] = [:]
            for (index, user) in users.enumerated() {
                let phone = try await TestClient.connect(port: daemon.port, token: try await FaultCluster.token(user: user))
                _ = try await phone.hello("phone")
                _ = try await phone.acked("p", .play(.init(trackID: "t00\(10 + index)", device: "phone")))
                last[user] = try await phone.acked("s", .pause).version
                await phone.connection.close()
            }
            // Wait until the first keys carry their expiry, then come back at moments spread over it.
            _ = try await eventually(timeout: .seconds(15)) { (Int(try Self.redis(redis, "PTTL", "pb:{u:\(users[0])}")) ?? -1) > 0 }
            let seen = last
            try await withThrowingTaskGroup(of: (String, ServerMessage.Welcome).self) { group in
                for (index, user) in users.enumerated() {
                    group.addTask {
                        try await Task.sleep(for: .milliseconds(Int64(index) * Self.idleTTLMs / 6))
                        let phone = try await TestClient.connect(port: daemon.port, token: try await FaultCluster.token(user: user))
                        return (user, try await phone.hello("phone", lastSeen: .init(epoch: 1, version: seen[user] ?? 0)))
                    }
                }
                for try await (user, welcome) in group {
                    let index = users.firstIndex(of: user) ?? 0
                    #expect(welcome.state.track?.id == "t00\(10 + index)", "\(user): \(welcome.state)")
                    #expect(welcome.state.version >= (seen[user] ?? 0), "\(user): version went back: \(welcome.state.version)")
                }
            }
        }
    }

    static func withDaemon(_ body: (DaemonProcess, RedisProcess) async throws -> Void) async throws {
        let database = try await TestDatabase.create()
        defer { database.drop() }
        let redis = try await offloaded { try RedisProcess() }
        let postgres = try PostgresSettings(url: TestDatabase.serverURL)
        let daemon = try await offloaded {
            let daemon = try DaemonProcess(arguments: [
                "--engine", "redis", "--redis-url", redis.url, "--catalog", "builtin", "--idle-ttl-ms", String(Self.idleTTLMs),
                "--snapshot-interval-ms", "200",
                "--postgres-url", "postgres://\(postgres.user)@\(postgres.host):\(postgres.port)/\(database.name)",
            ])
            try daemon.waitUntilHealthy()
            return daemon
        }
        defer { daemon.stop() }
        try await body(daemon, redis)
    }

    static func redis(_ redis: RedisProcess, _ arguments: String...) throws -> String {
        try runProgram("/usr/bin/redis-cli", ["-p", String(redis.port)] + arguments).output.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
