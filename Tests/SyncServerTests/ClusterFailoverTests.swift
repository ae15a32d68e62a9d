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
    /// be missing on the replica: they are counted as lost, and everything else holds: epochs
    /// only rise, no version is handed out twice (the nodes restore above what they saw), no
    /// two devices hold the lease at once, the stores agree at the end.
    @Test func aMasterKilledAndItsReplicaPromotedWhileCommandsFlow() async throws {
        try await FaultCluster.run("Redis Cluster master killed, replica promoted", settleSeconds: 6, onCluster: true, lossAllowed: true) { cluster in
            try await Task.sleep(for: .seconds(FaultTests.loadSeconds / 4))
            try await offloaded {
                guard let redis = cluster.redisCluster, let master = try redis.masters().first else { return }
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
}
