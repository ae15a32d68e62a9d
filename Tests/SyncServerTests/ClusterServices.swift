import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A Redis Cluster of the test's own: 3 masters and 3 replicas on free ports (each with its
/// cluster bus port, +10,000, free too), data in a temporary directory, a 2 s node timeout so a
/// failover takes seconds. Nodes can be killed and started again; slots resharded.
final class RedisClusterProcess: Sendable {
    static let nodeTimeoutMs = 2_000
    let ports: [Int]
    let directory: String
    private let processes = Mutex<[Int: ChildProcess]>([:])

    init() throws {
        var ports: [Int] = []
        while ports.count < 6 {
            let port = try ListenPorts.pick()
            if port + 10_000 <= 65_000, ListenPorts.isFree(port + 10_000) { ports.append(port) }
        }
        self.ports = ports
        directory = NSTemporaryDirectory() + "playback-cluster-\(UUID().uuidString.prefix(8))"
        for port in ports { try start(port: port) }
        let create = try runProgram(
            "/usr/bin/redis-cli", ["--cluster", "create"] + ports.map { "127.0.0.1:\($0)" } + ["--cluster-replicas", "1", "--cluster-yes"])
        guard create.code == 0 else { throw TestFailure("redis-cli --cluster create failed: \(create.output.suffix(1_000))") }
        try waitUntilHealthy(seconds: 30)
        try waitForReplicas(seconds: 30)
    }

    /// Until each master has a replica whose link to it is up (a replica still attaching or
    /// syncing cannot take over; a failover test would wait for nothing).
    func waitForReplicas(seconds: Double) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let replicas = (try? nodes().filter { !$0.isMaster }) ?? []
            let synced = replicas.filter { replica in
                (try? runProgram("/usr/bin/redis-cli", ["-p", String(replica.port), "info", "replication"]))?.output
                    .contains("master_link_status:up") == true
            }
            if synced.count == 3 { return }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw TestFailure("the cluster's replicas did not all sync within \(seconds) s")
    }

    /// The seeds: the first three nodes.
    var url: String { "redis+cluster://" + ports.prefix(3).map { "127.0.0.1:\($0)" }.joined(separator: ",") }

    func start(port: Int) throws {
        let dir = "\(directory)/\(port)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let process = try ChildProcess("/usr/bin/redis-server", [
            "--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no",
            "--cluster-enabled", "yes", "--cluster-config-file", "\(dir)/nodes.conf",
            "--cluster-node-timeout", String(Self.nodeTimeoutMs),
        ])
        processes.withLock { $0[port] = process }
        for _ in 0..<100 {
            if (try? runProgram("/usr/bin/redis-cli", ["-p", String(port), "ping"]))?.output.contains("PONG") == true { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw TestFailure("redis cluster node on port \(port) did not start")
    }

    /// Until the cluster has a master for every slot again without the node on `port` (its
    /// replica promoted) and says `cluster_state:ok`.
    func waitForFailover(from port: Int, seconds: Double) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let masters = try? masters(), !masters.contains(where: { $0.port == port }), masters.reduce(0, { $0 + $1.slots }) == 16_384 {
                return try waitUntilHealthy(seconds: max(1, deadline.timeIntervalSinceNow))
            }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw TestFailure("no replica took over from the master on port \(port) within \(seconds) s")
    }

    /// kill -9 of one node.
    func kill(port: Int) {
        guard let process = processes.withLock({ $0.removeValue(forKey: port) }) else { return }
        process.signal(SIGKILL)
        _ = process.wait()
    }

    struct Node {
        var id: String
        var port: Int
        var isMaster: Bool
        var slots: Int
    }

    /// What the cluster says of its nodes (asked at a live node).
    func nodes() throws -> [Node] {
        let live = processes.withLock { Array($0.keys) }.sorted()
        for port in live {
            guard let reply = try? runProgram("/usr/bin/redis-cli", ["-p", String(port), "cluster", "nodes"]), reply.code == 0 else { continue }
            return reply.output.split(separator: "\n").compactMap { line in
                let fields = line.split(separator: " ")
                guard fields.count >= 8, let address = fields[1].split(separator: "@").first,
                    let nodePort = address.split(separator: ":").last.flatMap({ Int($0) })
                else { return nil }
                let slots = fields.dropFirst(8).reduce(0) { total, range in
                    let bounds = range.split(separator: "-").compactMap { Int($0) }
                    return total + (bounds.count == 2 ? bounds[1] - bounds[0] + 1 : bounds.count == 1 ? 1 : 0)
                }
                return Node(id: String(fields[0]), port: nodePort, isMaster: fields[2].contains("master") && !fields[2].contains("fail"), slots: slots)
            }
        }
        throw TestFailure("no node of the cluster answers")
    }

    /// Masters that serve slots, most slots first.
    func masters() throws -> [Node] {
        try nodes().filter { $0.isMaster && $0.slots > 0 }.sorted { $0.slots > $1.slots }
    }

    /// `redis-cli --cluster reshard`: moves `slots` slots between two masters, keys included.
    func reshard(slots: Int, from: Node, to: Node) throws {
        // redis-cli refuses to start while the nodes' views differ (right after another reshard).
        for _ in 0..<100 {
            let check = try runProgram("/usr/bin/redis-cli", ["--cluster", "check", "127.0.0.1:\(from.port)"])
            if check.code == 0, !check.output.contains("[ERR]") { break }
            Thread.sleep(forTimeInterval: 0.2)
        }
        let result = try runProgram("/usr/bin/redis-cli", [
            "--cluster", "reshard", "127.0.0.1:\(from.port)", "--cluster-from", from.id, "--cluster-to", to.id,
            "--cluster-slots", String(slots), "--cluster-yes", "--cluster-pipeline", "100",
        ])
        guard result.code == 0 else {
            let errors = result.output.split(separator: "\n").filter { $0.contains("ERR") || $0.contains("rror") }.joined(separator: "\n")
            throw TestFailure("reshard failed (\(result.code)): \(errors.isEmpty ? String(result.output.suffix(500)) : errors)")
        }
    }

    /// Until every live node says `cluster_state:ok` and all 16,384 slots are served.
    func waitUntilHealthy(seconds: Double) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let live = processes.withLock { Array($0.keys) }
            let ok = live.allSatisfy { port in
                (try? runProgram("/usr/bin/redis-cli", ["-p", String(port), "cluster", "info"]))?.output.contains("cluster_state:ok") == true
            }
            if ok, (try? masters().reduce(0) { $0 + $1.slots }) == 16_384 { return }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw TestFailure("the redis cluster did not become healthy within \(seconds) s")
    }

    func destroy() {
        for port in ports { kill(port: port) }
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit { destroy() }
}
