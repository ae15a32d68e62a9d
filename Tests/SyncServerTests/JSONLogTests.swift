import Foundation
import Logging
import PlaybackStore
import SyncServer
import Synchronization
import Testing

@Suite("JSON logs")
struct JSONLogTests {
    /// The lines a handler wrote.
    final class Lines: Sendable {
        private let raw = Mutex<[String]>([])

        func append(_ bytes: [UInt8]) {
            let text = String(decoding: bytes, as: UTF8.self)
            raw.withLock { $0.append(text) }
        }

        var texts: [String] { raw.withLock { $0 } }
    }

    @Test func aRecordIsOneJSONObjectOnOneLineWithItsMetadataAsKeys() throws {
        let lines = Lines()
        var handler = JSONLogHandler(label: "playback-syncd") { lines.append($0) }
        handler.logLevel = .debug
        handler[metadataKey: "node.id"] = "n1"
        let logger = Logger(label: "playback-syncd") { _ in handler }
        logger.info("lease \"moved\"\nnext line", metadata: ["user.id": "alice", "lease.epoch": .stringConvertible(7), "tags": ["a", "b"]])
        logger.trace("below the level")

        #expect(lines.texts.count == 1)
        let text = lines.texts.first ?? ""
        #expect(text.hasSuffix("\n") && !text.dropLast().contains("\n"), "one line: \(text)")
        let record = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] ?? [:]
        #expect(record["message"] as? String == "lease \"moved\"\nnext line")
        #expect(record["level"] as? String == "info")
        #expect(record["logger"] as? String == "playback-syncd")
        #expect(record["user.id"] as? String == "alice")
        #expect(record["lease.epoch"] as? String == "7")
        #expect(record["node.id"] as? String == "n1")
        #expect(record["tags"] as? [String] == ["a", "b"])
        let timestamp = record["ts"] as? String ?? ""
        let parsed = try Date(timestamp, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))
        #expect(abs(parsed.timeIntervalSinceNow) < 60, "\(timestamp)")
    }

    /// A daemon started with `--log-format json` writes nothing but JSON lines, from its start to
    /// a clean stop on SIGTERM, and a clean stop (with Redis and PostgreSQL) logs no error.
    @Test(.enabled(if: FaultCluster.binaryExists, "needs .build/debug/playback-syncd"))
    func aDaemonWritesOnlyJSONLinesAndNoErrorOnACleanStop() async throws {
        let database = try await TestDatabase.create()
        defer { database.drop() }
        let redis = ProcessInfo.processInfo.environment["PLAYBACK_REDIS_URL"] ?? "redis://127.0.0.1:6390/0"
        let postgres = try PostgresSettings(url: TestDatabase.serverURL)
        let url = "postgres://\(postgres.user)@\(postgres.host):\(postgres.port)/\(database.name)"
        let daemon = try await offloaded {
            let daemon = try DaemonProcess(arguments: [
                "--log-format", "json", "--log-level", "debug", "--engine", "redis", "--redis-url", redis, "--postgres-url", url, "--catalog", "builtin",
            ])
            try daemon.waitUntilHealthy()
            return daemon
        }
        defer { daemon.stop() }
        // Something to write at the stop: a device playing (its snapshot goes to PostgreSQL on SIGTERM).
        let device = try await TestClient.connect(port: daemon.port, token: try await FaultCluster.token(user: "json-log-\(daemon.port)"))
        _ = try await device.hello("speaker", kind: .speaker)
        try await device.acked("p", .play(.init(trackID: "t0001")))
        let log = try await offloaded {
            daemon.signal(SIGTERM)
            let status = daemon.waitForExit(seconds: 15)
            return (status, try String(contentsOfFile: daemon.log, encoding: .utf8))
        }
        #expect(log.0 == 0, "exit status: \(String(describing: log.0))")
        let lines = log.1.split(separator: "\n")
        #expect(lines.count >= 2, "\(log.1)")
        var levels: [String] = []
        for line in lines {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["message"] is String && object?["ts"] is String, "not a JSON record: \(line)")
            levels.append(object?["level"] as? String ?? "?")
        }
        #expect(!levels.contains("error") && !levels.contains("critical"), "\(log.1)")
    }
}
