import DeviceSimKit
import StoreInspection
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(Glibc)
import Glibc
#endif
@testable import SyncServer
import Synchronization
import Testing

/// Faults on real processes: three playback-syncd daemons (the built binary), a redis-server and
/// a PostgreSQL cluster of the test's own, a swarm of reconnecting devices sending commands while
/// the fault happens, then the invariant checker over every device's log, Redis and PostgreSQL.
///
/// `FAULT_LOAD_SECONDS` (default 6) sets how long the load runs; `FAULT_POSTGRES_DOWN_SECONDS`
/// (default 5) how long PostgreSQL stays stopped; `FAULT_REPORT_DIR` collects one JSON report per
/// fault (scripts/chaos runs the long version and writes docs/faults.md from them);
/// `FAULT_KEEP_LOGS` keeps the daemons' logs (/tmp/playback-fault-PORT.log), `FAULT_LOG_LEVEL`
/// sets how much they log (default warning).
@Suite("faults on real processes", .serialized, .enabled(if: FaultCluster.binaryExists, "needs .build/debug/playback-syncd"))
struct FaultTests {
    static let environment = ProcessInfo.processInfo.environment
    static let loadSeconds = environment["FAULT_LOAD_SECONDS"].flatMap(Double.init) ?? 6
    static let postgresDownSeconds = environment["FAULT_POSTGRES_DOWN_SECONDS"].flatMap(Double.init) ?? 5

    @Test func killNineOfANodeInTheMiddleOfTransfers() async throws {
        try await FaultCluster.run("kill -9 of a node during transfers", mix: "transfer:4,volume:2,seek:1,pause:1,resume:1") { cluster in
            try await Task.sleep(for: .seconds(Self.loadSeconds / 3))
            cluster.daemons[0].signal(SIGKILL)
        } verify: { report, cluster in
            #expect(cluster.daemons[0].exitedBySignal == SIGKILL)
            #expect(report.disconnections > 0, "the devices of the killed node lost their connection")
        }
    }

    @Test func sigstopOfANodeLongerThanTheLeaseTTLThenSigcont() async throws {
        try await FaultCluster.run("SIGSTOP past the lease TTL, then SIGCONT") { cluster in
            try await Task.sleep(for: .seconds(Self.loadSeconds / 4))
            cluster.daemons[0].signal(SIGSTOP)
            try await Task.sleep(for: .milliseconds(FaultCluster.graceMs + 2_000))
            cluster.daemons[0].signal(SIGCONT)
        } verify: { report, _ in
            #expect(report.invariants.commands.fencedReports > 0, "reports queued at the stopped node are turned away with stale_epoch")
        }
    }

    @Test func redisRestartedWithoutPersistence() async throws {
        try await FaultCluster.run("redis-server killed and restarted empty") { cluster in
            try await Task.sleep(for: .seconds(Self.loadSeconds / 3))
            cluster.markFault()
            try await offloaded { cluster.redis.kill() }
            try await Task.sleep(for: .seconds(1))
            try await offloaded { try cluster.redis.start() }
        } verify: { report, _ in
            #expect((report.stores?.redis?.count ?? 0) == report.users, "every user's playback is back in Redis")
        }
    }

    /// Redis back empty at once: the daemons restore every user while commands keep coming, each
    /// from the snapshot it holds; the newest snapshot any of them holds wins (a daemon with a newer
    /// one queued replaces an older restore while nothing has committed on top of it).
    @Test func redisRestartedEmptyAtOnce() async throws {
        try await FaultCluster.run("redis-server restarted empty at once") { cluster in
            for _ in 0..<2 {
                try await Task.sleep(for: .seconds(Self.loadSeconds / 3))
                cluster.markFault()
                try await offloaded {
                    cluster.redis.kill()
                    try cluster.redis.start()
                }
            }
        } verify: { report, _ in
            #expect((report.stores?.redis?.count ?? 0) == report.users, "every user's playback is back in Redis")
        }
    }

    @Test func pubsubConnectionsKilled() async throws {
        try await FaultCluster.run("CLIENT KILL TYPE pubsub") { cluster in
            for _ in 0..<3 {
                try await Task.sleep(for: .seconds(Self.loadSeconds / 4))
                let port = String(cluster.redis.port)
                let killed = try await offloaded { try runProgram("/usr/bin/redis-cli", ["-p", port, "CLIENT", "KILL", "TYPE", "pubsub"]) }
                #expect(killed.code == 0 && (Int(killed.output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) >= 3)
            }
        } verify: { _, _ in }
    }

    @Test func postgresStoppedThenStarted() async throws {
        // The write-behind retries with a backoff of up to 2 s while PostgreSQL is down, and PostgreSQL
        // takes a moment to start: the snapshots may need more than 6 s to catch up on a loaded machine.
        try await FaultCluster.run("PostgreSQL stopped for \(Int(Self.postgresDownSeconds)) s", settleSeconds: 10) { cluster in
            try await Task.sleep(for: .seconds(Self.loadSeconds / 4))
            try await offloaded { try cluster.postgres.stop() }
            try await Task.sleep(for: .seconds(Self.postgresDownSeconds))
            try await offloaded { try cluster.postgres.start() }
        } verify: { report, _ in
            #expect((report.stores?.postgres?.count ?? 0) == report.users, "every user's snapshot caught up")
        }
    }

    // MARK: Combined faults

    @Test func postgresDownWhileRedisRestartsEmpty() async throws {
        try await FaultCluster.run("PostgreSQL down while Redis restarts empty", settleSeconds: 10) { cluster in
            try await Task.sleep(for: .seconds(Self.loadSeconds / 4))
            try await offloaded { try cluster.postgres.stop() }
            try await Task.sleep(for: .seconds(1))
            cluster.markFault()
            try await offloaded { cluster.redis.kill() }
            try await Task.sleep(for: .seconds(1))
            try await offloaded { try cluster.redis.start() }
            try await Task.sleep(for: .seconds(Self.postgresDownSeconds))
            try await offloaded { try cluster.postgres.start() }
        } verify: { report, _ in
            #expect((report.stores?.redis?.count ?? 0) == report.users, "every user's playback is back in Redis")
            #expect((report.stores?.postgres?.count ?? 0) == report.users, "every user's snapshot caught up")
        }
    }

    /// The stopped node cannot offer the snapshots it holds while Redis comes back (it is stopped
    /// longer than a restore waits for them): what it alone held, its commits of the last snapshot
    /// interval before it stopped, may be lost. Every loss must be such a commit.
    @Test func aNodeStoppedWhileRedisRestartsEmpty() async throws {
        try await FaultCluster.run("SIGSTOP of a node while Redis restarts empty", lossWindowMs: FaultCluster.snapshotIntervalMs + 500) { cluster in
            try await Task.sleep(for: .seconds(Self.loadSeconds / 4))
            cluster.daemons[0].signal(SIGSTOP)
            cluster.markFault()
            try await offloaded { cluster.redis.kill() }
            try await Task.sleep(for: .seconds(1))
            try await offloaded { try cluster.redis.start() }
            try await Task.sleep(for: .milliseconds(FaultCluster.graceMs + 1_000))
            cluster.daemons[0].signal(SIGCONT)
        } verify: { report, _ in
            #expect((report.stores?.redis?.count ?? 0) == report.users, "every user's playback is back in Redis")
        }
    }

    /// A user whose devices are all on the node that is killed: another node, with none of them,
    /// expires the lease within the grace period and a second (plus a second for a loaded machine).
    @Test func aNodeKilledWithAllOfAUsersDevicesOnIt() async throws {
        let solo = Mutex<(expiredAfterMs: Int64?, positionMs: Int64?)>((nil, nil))
        try await FaultCluster.run("kill -9 of a node holding all of a user's devices") { cluster in
            let token = try await FaultCluster.token(user: "solo")
            let speaker = try await TestClient.connect(port: cluster.daemons[0].port, token: token)
            _ = try await speaker.hello("speaker")
            let phone = try await TestClient.connect(port: cluster.daemons[0].port, token: token)
            _ = try await phone.hello("phone")
            try await phone.command("p", .play(.init(trackID: "t0001", device: "speaker")))
            try await Task.sleep(for: .seconds(Self.loadSeconds / 3))
            cluster.daemons[0].signal(SIGKILL)
            let killed = ContinuousClock.now
            let survivor = cluster.daemons[1].port
            while milliseconds(since: killed) < 15_000 {
                let player = try await FaultCluster.player(port: survivor, token: token)
                if player?["active_device"] == nil || player?["active_device"] is NSNull {
                    solo.withLock { $0 = (milliseconds(since: killed), (player?["position_ms"] as? Int).map(Int64.init)) }
                    break
                }
                try await Task.sleep(for: .milliseconds(100))
            }
        } verify: { _, _ in
            let (expiredAfter, position) = solo.withLock { $0 }
            print("fault kill -9 of a node holding all of a user's devices: expired after \(expiredAfter ?? -1) ms at position \(position ?? -1) ms")
            #expect(expiredAfter != nil, "the survivor expired the lease of the dead node's device")
            #expect((expiredAfter ?? .max) <= FaultCluster.graceMs + 2_000, "expired \(expiredAfter ?? -1) ms after the kill")
            // Paused where the track was when its node was last heard of, not at the expiry.
            let playedMs = Int64(Self.loadSeconds / 3 * 1_000)
            #expect((position ?? .max) <= playedMs + 1_000, "paused at \(position ?? -1) ms after about \(playedMs) ms of play")
        }
    }

    @Test func sigtermOfANodeMovesItsDevicesElsewhere() async throws {
        try await FaultCluster.run("SIGTERM of a node") { cluster in
            try await Task.sleep(for: .seconds(Self.loadSeconds / 3))
            cluster.daemons[1].signal(SIGTERM)
        } verify: { report, cluster in
            let daemon = cluster.daemons[1]
            let status = try await offloaded { daemon.waitForExit(seconds: 15) }
            #expect(status == 0, "a graceful shutdown exits 0")
            #expect(report.closeCodes[1001, default: 0] > 0, "devices of the stopping node were told 1001 (going away)")
        }
    }
}

/// Three daemons on a redis-server (or, `onCluster`, a Redis Cluster) and a PostgreSQL cluster of their own.
final class FaultCluster: Sendable {
    static let graceMs: Int64 = 3_000
    static let snapshotIntervalMs: Int64 = 500
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let binary = root.appendingPathComponent(".build/debug/playback-syncd").path
    /// Whether the suites that start the built daemon run: when it is there, and always in CI
    /// (`CI=true`), where a missing binary fails them (`DaemonProcess` says so) instead of skipping them.
    static var binaryExists: Bool {
        FileManager.default.isExecutableFile(atPath: binary) || ProcessInfo.processInfo.environment["CI"] == "true"
    }

    let redis: RedisProcess
    let redisCluster: RedisClusterProcess?
    let postgres: PostgresProcess
    let daemons: [DaemonProcess]
    /// When the fault that may lose writes began (monotonic ns, the swarm's clock), once marked.
    private let faultAt = Mutex<UInt64?>(nil)

    /// Marks the moment the fault began (the first mark counts): losses are judged against it.
    func markFault() {
        let now = DispatchTime.now().uptimeNanoseconds
        faultAt.withLock { $0 = $0 ?? now }
    }

    /// Where the daemons keep their state: the cluster when there is one.
    var redisURL: String { redisCluster?.url ?? redis.url }

    init(nodes: Int = 3, onCluster: Bool = false) throws {
        redis = try RedisProcess()
        redisCluster = onCluster ? try RedisClusterProcess() : nil
        postgres = try PostgresProcess()
        let postgresURL = "postgres://postgres@127.0.0.1:\(postgres.port)/postgres"
        var daemons: [DaemonProcess] = []
        for _ in 0..<nodes {
            daemons.append(try DaemonProcess(arguments: [
                "--engine", "redis", "--redis-url", redisCluster?.url ?? redis.url, "--postgres-url", postgresURL, "--catalog", "builtin",
                "--grace-ms", String(Self.graceMs), "--heartbeat-ms", "1000",
                "--log-level", ProcessInfo.processInfo.environment["FAULT_LOG_LEVEL"] ?? "warning",
                "--messages-per-second", "1000", "--snapshot-interval-ms", String(Self.snapshotIntervalMs),
                // The machine is loaded by the test itself: no overload refusals (OverloadTests has them).
                "--max-bus-lag-ms", "0",
            ]))
        }
        self.daemons = daemons
        for daemon in daemons { try daemon.waitUntilHealthy() }
    }

    var postgresURL: String { "postgres://postgres@127.0.0.1:\(postgres.port)/postgres" }

    /// A token the daemons (on the development secret) accept.
    static func token(user: String) async throws -> String {
        let authenticator = await Authenticator(secret: ServerConfiguration.developmentJWTSecret, allowedOrigins: [])
        return try await authenticator.sign(AccessToken(user: user, expires: Date().addingTimeInterval(3_600)))
    }

    /// The user's `state` from `GET /v1/me/player` on a daemon (nil when it has none).
    static func player(port: Int, token: String) async throws -> [String: Any]? {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/v1/me/player")!)
        request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        let (data, _) = try await URLSession.shared.data(for: request)
        return (try? JSONSerialization.jsonObject(with: data) as? [String: Any])?["state"] as? [String: Any]
    }

    /// Waits until no daemon has a snapshot queued for PostgreSQL (`playback_store_pending`), or `seconds` passed.
    ///
    /// The gauge is refreshed each write-behind tick (100 ms): a snapshot queued by the last
    /// command may not show yet, so it first waits out a few ticks, and takes nothing queued as
    /// the answer only when two readings in a row say so.
    func waitForWriteBehind(seconds: Double) {
        let deadline = Date().addingTimeInterval(seconds)
        var quietReadings = 0
        Thread.sleep(forTimeInterval: 0.5)
        while Date() < deadline {
            let queued = daemons.contains { daemon in
                guard let metrics = try? runProgram("/usr/bin/curl", ["-sf", "-m", "3", "http://127.0.0.1:\(daemon.port)/metrics"]),
                    metrics.code == 0
                else {
                    // A daemon the fault ended has nothing to write; one that is only slow to answer
                    // (a loaded machine) may have, and is asked again.
                    return daemon.isRunning
                }
                return metrics.output.split(separator: "\n").contains { line in
                    line.hasPrefix("playback_store_pending{kind=\"snapshot\"}") && line.split(separator: " ").last.flatMap { Double($0) } != 0
                }
            }
            quietReadings = queued ? 0 : quietReadings + 1
            if quietReadings == 2 { return }
            Thread.sleep(forTimeInterval: 0.2)
        }
    }

    /// Stops everything; the daemons' logs stay in /tmp only with FAULT_KEEP_LOGS set.
    func tearDown() {
        for daemon in daemons { daemon.stop() }
        if ProcessInfo.processInfo.environment["FAULT_KEEP_LOGS"] == nil {
            for daemon in daemons { try? FileManager.default.removeItem(atPath: daemon.log) }
        }
        redis.kill()
        redisCluster?.destroy()
        postgres.destroy()
    }

    /// Runs a reconnecting swarm over the three daemons with `fault` during the load, checks
    /// the invariants and that nothing acked was lost, then `verify`s what is particular to the fault.
    /// `lossWindowMs`: the fault may lose acknowledged commands (a Redis failover: replication is
    /// asynchronous), those acked at most that long before the fault's mark; the report says how
    /// many, every loss must fall in that window, and every other invariant must still hold.
    static func run(
        _ name: String, mix: String = "volume:4,seek:2,pause:1,resume:1,next:1,transfer:2", settleSeconds: Double = 3,
        onCluster: Bool = false, lossWindowMs: Int64? = nil,
        fault: @escaping @Sendable (FaultCluster) async throws -> Void,
        verify: (SwarmReport, FaultCluster) async throws -> Void
    ) async throws {
        let cluster = try await offloaded { try FaultCluster(onCluster: onCluster) }
        do {
            try await load(
                name, cluster: cluster, mix: mix, settleSeconds: settleSeconds, lossWindowMs: lossWindowMs, fault: fault, verify: verify)
            try await offloaded { cluster.tearDown() }
        } catch {
            try await offloaded { cluster.tearDown() }
            throw error
        }
    }

    private static func load(
        _ name: String, cluster: FaultCluster, mix: String, settleSeconds: Double, lossWindowMs: Int64?,
        fault: @escaping @Sendable (FaultCluster) async throws -> Void,
        verify: (SwarmReport, FaultCluster) async throws -> Void
    ) async throws {
        var options = Swarm.Options(servers: cluster.daemons.map { ServerAddress(host: "127.0.0.1", port: $0.port) })
        options.users = 12
        options.devicesPerUser = 4
        options.rate = 60
        options.durationSeconds = FaultTests.loadSeconds
        options.reconnect = true
        options.reportMs = 400
        options.graceMs = graceMs
        // Transfers are two-phase: each target confirms its start, through every fault.
        options.confirmStarts = true
        options.settleSeconds = settleSeconds
        options.mix = try Swarm.Options.parseMix(mix)
        let inspector = StoreInspector(redisURL: cluster.redisURL, postgresURL: cluster.postgresURL)
        let report = try await Swarm(options: options).run(stores: { users in
            // PostgreSQL is written behind the command path: compare it once every daemon's queue drained
            // (after PostgreSQL came back a daemon's writer has been seen to need more than 30 s: its
            // queue draining late is still not a loss, and the comparison says if it never does).
            try await offloaded { cluster.waitForWriteBehind(seconds: 90) }
            return try await inspector.read(users: users)
        }) { try await fault(cluster) }
        publish(name, report)
        let commands = report.invariants.commands
        // Liveness after the fault is in the checker: every user's final command acked (invariant 7).
        #expect(commands.acked > 0, "the load went on through the fault")
        if let lossWindowMs {
            // Commands acked by a master that died before its replica had them: counted, never
            // repeated (their versions are handed out again only above what the devices saw), and
            // all of them acked in the window before the fault.
            let fault = try #require(cluster.faultAt.withLock { $0 }, "the fault marked its start")
            let outside = commands.lostAcks.filter { ack in
                let before = Int64(fault) - Int64(ack)
                return before > lossWindowMs * 1_000_000 || before < -500_000_000
            }
            #expect(outside.isEmpty, "\(outside.count) of \(commands.lost) losses outside the \(lossWindowMs) ms before the fault: \(report.invariants.details)")
            #expect(report.invariants.total - commands.lost == 0, "\(report.invariants.text)")
        } else {
            #expect(commands.lost == 0, "acked commands lost: \(report.invariants.details)")
            #expect(report.invariants.total == 0, "\(report.invariants.text)")
        }
        try await verify(report, cluster)
    }
}

/// Prints a fault's line, and writes its JSON report into `FAULT_REPORT_DIR` when set (scripts/chaos).
private func publish(_ name: String, _ report: SwarmReport) {
    let commands = report.invariants.commands
    print(
        "fault \(name): sent=\(commands.sent) acked=\(commands.acked) applied=\(commands.applied) no-ops=\(commands.noOps) "
            + "unobserved=\(commands.unobserved) lost=\(commands.lost) rolled-back=\(commands.rolledBack) "
            + "rolled-back-age-ms=\(commands.rolledBackMaxAgeMs) final-not-acked=\(commands.finalNotAcked) violations=\(report.invariants.total) "
            + "fenced=\(commands.fencedReports) disconnections=\(report.disconnections)")
    guard let directory = ProcessInfo.processInfo.environment["FAULT_REPORT_DIR"] else { return }
    struct Entry: Encodable {
        var name: String
        var report: SwarmReport
    }
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    let file = URL(fileURLWithPath: directory).appendingPathComponent(
        name.lowercased().filter { $0.isLetter || $0.isNumber || $0 == " " }.replacingOccurrences(of: " ", with: "-") + ".json")
    try? encoder.encode(Entry(name: name, report: report)).write(to: file)
}

/// A playback-syncd process on a port of its own, its output in a log file.
final class DaemonProcess: Sendable {
    let port: Int
    let log: String
    private let process: ChildProcess

    init(arguments: [String]) throws {
        guard FileManager.default.isExecutableFile(atPath: FaultCluster.binary) else {
            throw TestFailure("no playback-syncd at \(FaultCluster.binary): build it first (swift build)")
        }
        port = try ListenPorts.pick()
        log = "/tmp/playback-fault-\(port).log"
        try? FileManager.default.removeItem(atPath: log)
        process = try ChildProcess(FaultCluster.binary, ["--port", String(port)] + arguments, output: log)
    }

    func waitUntilHealthy() throws {
        for _ in 0..<300 {
            if (try? runProgram("/usr/bin/curl", ["-sf", "-m", "1", "http://127.0.0.1:\(port)/healthz"]))?.code == 0 { return }
            guard process.isRunning else { break }
            Thread.sleep(forTimeInterval: 0.1)
        }
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        throw TestFailure("playback-syncd on port \(port) did not come up: \(output.suffix(2_000))")
    }

    func signal(_ signal: Int32) { process.signal(signal) }

    var isRunning: Bool { process.isRunning }

    /// The exit status, once it exited (nil when it is still running after `seconds`, or was killed).
    func waitForExit(seconds: Double) -> Int32? {
        guard case .exited(let status) = process.wait(seconds: seconds) else { return nil }
        return status
    }

    var exitedBySignal: Int32? {
        guard case .signaled(let signal) = process.wait(seconds: 0) else { return nil }
        return signal
    }

    func stop() {
        guard process.isRunning else { return }
        process.signal(SIGCONT)
        process.signal(SIGTERM)
        if process.wait(seconds: 10) == nil {
            process.signal(SIGKILL)
            _ = process.wait()
        }
    }
}
