import DeviceSimKit
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing

/// Three daemons on a Redis Cluster of the test's own (3 masters, 3 replicas) while commands flow:
/// slots resharded, a master killed and its replica promoted; then the invariant checker over
/// every device's log, the cluster and PostgreSQL. And the HAProxy deployment example.
@Suite("Redis Cluster faults on real processes", .serialized, .enabled(if: FaultCluster.binaryExists, "needs .build/debug/playback-syncd"))
struct ClusterFailoverTests {
    /// `redis-cli --cluster reshard` moves a third of a master's slots, with their keys, while the
    /// swarm sends commands: redirects are followed, shard channels follow their slots, and not
    /// one acknowledged command is lost.
    @Test func slotsReshardedWhileCommandsFlow() async throws {
        try await FaultCluster.run("Redis Cluster resharded under load", onCluster: true) { cluster in
            try await Task.sleep(for: .seconds(FaultTests.loadSeconds / 4))
            try await offloaded {
                guard let redis = cluster.redisCluster else { return }
                let masters = try redis.masters()
                try redis.reshard(slots: 2_000, from: masters[0], to: masters[1])
                try redis.reshard(slots: 1_000, from: masters[1], to: masters[2])
            }
        } verify: { _, cluster in
            let masters = try cluster.redisCluster?.masters() ?? []
            #expect(masters.count == 3 && masters.reduce(0) { $0 + $1.slots } == 16_384, "\(masters.map(\.slots))")
            #expect(masters.map(\.slots).max() ?? 0 >= 6_000, "the slots moved: \(masters.map(\.slots))")
        }
    }

    /// kill -9 of the master serving most slots: its replica is promoted after the node timeout.
    /// Replication is asynchronous, so commands the master acknowledged in its last moments may
    /// be missing on the replica: they are counted as lost, and must all have been acked within
    /// `lossWindowMs` before the kill (replication lag on loopback plus the snapshot interval the
    /// nodes restore from); everything else holds: epochs only rise, no version is handed out
    /// twice (the nodes restore above what they saw), no two devices hold the lease at once, the
    /// stores agree at the end.
    static let lossWindowMs: Int64 = 1_500

    @Test func aMasterKilledAndItsReplicaPromotedWhileCommandsFlow() async throws {
        try await FaultCluster.run(
            "Redis Cluster master killed, replica promoted", settleSeconds: 6, onCluster: true, lossWindowMs: Self.lossWindowMs
        ) { cluster in
            try await Task.sleep(for: .seconds(FaultTests.loadSeconds / 4))
            try await offloaded {
                guard let redis = cluster.redisCluster, let master = try redis.masters().first else { return }
                cluster.markFault()
                redis.kill(port: master.port)
                try redis.waitForFailover(from: master.port, seconds: 30)
            }
        } verify: { report, cluster in
            #expect((report.stores?.redis?.count ?? 0) == report.users, "every user's playback is in the cluster")
            let masters = try cluster.redisCluster?.masters() ?? []
            #expect(masters.count == 3, "a replica took the dead master's slots")
            print("fault Redis Cluster master killed: \(report.invariants.commands.lost) acknowledged commands lost to asynchronous replication")
        }
    }

    /// The deployment example as a user would start it (scripts/deploy-cluster: three daemons on
    /// the local cluster behind HAProxy), loaded through the proxy by a swarm of devices.
    @Test func theHAProxyDeploymentServesASwarm() async throws {
        let proxy = try ListenPorts.pick()
        let first = try ListenPorts.pick()
        let log = "/tmp/playback-deploy-\(proxy).log"
        // The script takes consecutive ports from --first-port: check they are free too.
        try #require((1..<3).allSatisfy { ListenPorts.isFree(first + $0) }, "ports after \(first) are free")
        let script = try ChildProcess(
            "/bin/bash",
            [FaultCluster.root.appendingPathComponent("scripts/deploy-cluster").path, "--binary", FaultCluster.binary,
             "--proxy-port", String(proxy), "--first-port", String(first)],
            output: log)
        defer {
            script.signal(SIGTERM)
            _ = script.wait(seconds: 30)
        }
        var ready = false
        for _ in 0..<600 {
            guard script.isRunning else { break }
            if (try? runProgram("/usr/bin/curl", ["-sf", "-m", "1", "http://127.0.0.1:\(proxy)/readyz"]))?.code == 0 {
                ready = true
                break
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        if !ready {
            let startLog = FileManager.default.contents(atPath: log).map { String(decoding: $0, as: UTF8.self) } ?? "(no log at \(log))"
            let ended = script.wait(seconds: 0).map { "\($0)" } ?? "still running"
            Issue.record("the deployment did not come up (script: \(ended)): \(startLog.suffix(3_000))")
            return
        }

        var options = Swarm.Options(servers: [ServerAddress(host: "127.0.0.1", port: proxy)])
        options.users = 20
        options.devicesPerUser = 4
        options.rate = 100
        options.durationSeconds = 4
        options.reportMs = 400
        let report = try await Swarm(options: options).run()
        #expect(report.invariants.commands.acked > 300, "\(report.invariants.text)")
        #expect(report.invariants.total == 0, "\(report.invariants.text)")
        #expect(report.devicesWelcomed == 80)
        // leastconn spread the devices over the three daemons.
        for port in first..<(first + 3) {
            let metrics = try runProgram("/usr/bin/curl", ["-sf", "-m", "2", "http://127.0.0.1:\(port)/metrics"]).output
            let upgrades = metrics.split(separator: "\n").first { $0.hasPrefix("playback_ws_upgrades_total") }
            #expect(upgrades.flatMap { $0.split(separator: " ").last.flatMap { Double($0) } } ?? 0 > 0, "daemon on \(port) got devices")
        }
        print("deploy: HAProxy + 3 daemons on the cluster: \(report.invariants.commands.acked) commands acked, invariants \(report.invariants.total)")
    }
}
