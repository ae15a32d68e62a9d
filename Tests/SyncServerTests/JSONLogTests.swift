import Foundation
import Logging
import PlaybackStore
import SyncServer
import Synchronization
import Testing

@Suite("a daemon's logs and metrics, start to stop")
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

    /// A daemon (Redis, PostgreSQL, `--log-format json`) shows every metric the README lists from
    /// the start, writes nothing but JSON lines, and a clean stop on SIGTERM, with a device playing,
    /// logs no error.
    @Test(.enabled(if: FaultCluster.binaryExists, "needs .build/debug/playback-syncd"))
    func aDaemonShowsEveryListedMetricWritesOnlyJSONLinesAndStopsWithoutAnError() async throws {
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
        // Every metric the README lists is there from the start (this daemon has Redis and PostgreSQL).
        let metrics = try await offloaded { try runProgram("/usr/bin/curl", ["-sf", "-m", "5", "http://127.0.0.1:\(daemon.port)/metrics"]) }
        for name in try Self.metricsTheREADMELists() {
            #expect(metrics.output.contains("\n\(name)") || metrics.output.contains("# TYPE \(name) "), "\(name) is not at /metrics")
        }
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

    /// The metric names in the README's row for `GET /metrics`.
    static func metricsTheREADMELists() throws -> [String] {
        let readme = try String(contentsOf: FaultCluster.root.appendingPathComponent("README.md"), encoding: .utf8)
        guard let row = readme.split(separator: "\n").first(where: { $0.hasPrefix("| `GET /metrics`") }) else {
            throw TestFailure("the README has no row for GET /metrics")
        }
        let names = row.matches(of: /`(playback_[a-z_]+)/).map { String($0.output.1) }
        guard names.count >= 20 else { throw TestFailure("only \(names.count) metrics found in the README's row") }
        return names
    }
}
