import Foundation
import NIOCore
import Synchronization
import Testing

@testable import RedisClient

/// Slot computation, checked against values Redis documents.
@Suite("hash slots")
struct HashSlotTests {
    @Test(arguments: [
        ("123456789", 12_739),  // CRC16-XMODEM("123456789") = 0x31C3, the check value of the algorithm
        ("foo", 12_182),
        ("bar", 5_061),
        ("", 0),
    ])
    func slotsOfPlainKeys(key: String, slot: Int) {
        #expect(HashSlot.of(key) == slot)
    }

    @Test func hashTagsPickThePartBetweenTheFirstBraces() {
        #expect(HashSlot.of("{user1000}.following") == HashSlot.of("{user1000}.followers"))
        #expect(HashSlot.of("{user1000}.following") == HashSlot.of("user1000"))
        #expect(HashSlot.of("foo{bar}{zap}") == HashSlot.of("bar"), "only the first tag counts")
        #expect(HashSlot.of("foo{{bar}}zap") == HashSlot.of("{bar"), "the tag runs to the first closing brace")
        #expect(HashSlot.of("foo{}{bar}") == HashSlot.of("foo{}{bar}".utf8.map { $0 }), "an empty tag hashes the whole key")
        #expect(HashSlot.of("foo{}{bar}") != HashSlot.of("bar"))
        #expect(HashSlot.of("pb:{u:alice}") == HashSlot.of("ev:{u:alice}"), "a user's keys and channel share a slot")
    }

    @Test func redirectsAreRead() {
        #expect(ClusterRedirect(.error("MOVED 3999 127.0.0.1:6381")) == .moved(slot: 3_999, to: RedisNodeAddress(host: "127.0.0.1", port: 6_381)))
        #expect(ClusterRedirect(.error("ASK 3999 ::1:6381")) == .ask(slot: 3_999, to: RedisNodeAddress(host: "::1", port: 6_381)))
        #expect(ClusterRedirect(.error("TRYAGAIN Multiple keys request during rehashing of slot")) == .tryAgain)
        #expect(ClusterRedirect(.error("CLUSTERDOWN The cluster is down")) == .down)
        #expect(ClusterRedirect(.error("ERR unknown command")) == nil)
        #expect(ClusterRedirect(.simpleString("OK")) == nil)
    }

    @Test func clusterURLsAreRead() throws {
        let configuration = try RedisConfiguration(url: "redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001,10.0.0.3")
        #expect(configuration.clusterSeeds == [
            RedisNodeAddress(host: "10.0.0.1", port: 7_000), RedisNodeAddress(host: "10.0.0.2", port: 7_001),
            RedisNodeAddress(host: "10.0.0.3", port: 6_379),
        ])
        #expect(configuration.username == "app" && configuration.password == "s3cret")
        #expect(configuration.redacted == "redis+cluster://app:***@10.0.0.1:7000,10.0.0.2:7001,10.0.0.3:6379")
        #expect(throws: RedisError.self) { try RedisConfiguration(url: "redis+cluster://") }
        #expect(throws: RedisError.self) { try RedisConfiguration(url: "redis+cluster://h:1/3") }
        #expect(try RedisConfiguration(url: "redis://h:1/0").isCluster == false)
    }
}

/// The local cluster scripts/test starts (PLAYBACK_REDIS_CLUSTER_URL): 3 masters, 3 replicas.
enum TestCluster {
    static let url = ProcessInfo.processInfo.environment["PLAYBACK_REDIS_CLUSTER_URL"]

    static func client() throws -> RedisClusterClient {
        var configuration = try RedisConfiguration(url: url ?? "redis+cluster://127.0.0.1:7100")
        configuration.commandTimeoutMs = 20_000
        return RedisClusterClient(configuration: configuration)
    }

    /// A client of one node, outside the cluster client.
    static func node(_ address: RedisNodeAddress) -> RedisClient {
        var configuration = RedisConfiguration()
        configuration.host = address.host
        configuration.port = address.port
        configuration.commandTimeoutMs = 20_000
        return RedisClient(configuration: configuration)
    }

    /// Moves `slot` to `target` the way `redis-cli --cluster reshard` does: IMPORTING at the
    /// target, MIGRATING at the source, `between` (the slot is half-moved meanwhile), the keys
    /// migrated, then the new owner told to every master.
    static func move(
        slot: Int, from source: RedisNodeAddress, to target: RedisNodeAddress, masters: [RedisNodeAddress],
        between: () async throws -> Void = {}
    ) async throws {
        let from = node(source), to = node(target)
        let sourceID = try await from.send(["CLUSTER", "MYID"]).string ?? ""
        let targetID = try await to.send(["CLUSTER", "MYID"]).string ?? ""
        _ = try await to.send(["CLUSTER", "SETSLOT", .integer(Int64(slot)), "IMPORTING", .string(sourceID)])
        _ = try await from.send(["CLUSTER", "SETSLOT", .integer(Int64(slot)), "MIGRATING", .string(targetID)])
        try await between()
        while true {
            let keys = try await from.send(["CLUSTER", "GETKEYSINSLOT", .integer(Int64(slot)), "100"]).array ?? []
            if keys.isEmpty { break }
            _ = try await from.send(
                ["MIGRATE", .string(target.host), .integer(Int64(target.port)), "", "0", "5000", "KEYS"] + keys.compactMap(\.string).map { .string($0) })
        }
        for master in [target, source] + masters.filter({ $0 != source && $0 != target }) {
            _ = try await node(master).send(["CLUSTER", "SETSLOT", .integer(Int64(slot)), "NODE", .string(targetID)])
        }
        for client in [from, to] { await client.shutdown() }
    }
}

@Suite(
    "RedisClusterClient against a real cluster", .serialized,
    .enabled(if: TestCluster.url != nil || ProcessInfo.processInfo.environment["CI"] == "true", "needs PLAYBACK_REDIS_CLUSTER_URL (scripts/test starts a local cluster)"))
struct RedisClusterClientTests {
    @Test func slotsMatchWhatTheClusterComputes() async throws {
        let client = try TestCluster.client()
        var generator = SystemRandomNumberGenerator()
        var keys = ["pb:{u:alice}", "foo{}{bar}", "foo{{bar}}zap", "{}", "{", "}", "é{ü}ß", "lease-deadlines:{ld:7}"]
        for _ in 0..<500 {
            let length = Int.random(in: 1...24, using: &generator)
            keys.append(String((0..<length).map { _ in "ab{}:xyz019é".randomElement(using: &generator) ?? "a" }))
        }
        for key in keys {
            let slot = try await client.send(["CLUSTER", "KEYSLOT", .string(key)]).int
            #expect(slot.map(Int.init) == HashSlot.of(key), "slot of \(key)")
        }
        await client.shutdown()
    }

    @Test func commandsGoToTheMasterOfTheirSlot() async throws {
        let client = try TestCluster.client()
        let prefix = "test:route:\(UInt32.random(in: 0...UInt32.max))"
        let keys = (0..<300).map { "\(prefix):\($0)" }
        for key in keys { _ = try await client.send(["SET", .string(key), .string(key), "PX", "60000"]) }
        let topology = try #require(client.topology)
        #expect(topology.allMasters.count == 3)
        // Each key is where the map says, asked directly (no redirect could hide a wrong route).
        var byMaster: [RedisNodeAddress: Int] = [:]
        for key in keys {
            let master = try #require(topology.master(of: key))
            let direct = TestCluster.node(master)
            #expect(try await direct.send(["GET", .string(key)]).string == key)
            await direct.shutdown()
            byMaster[master, default: 0] += 1
        }
        #expect(byMaster.count == 3, "300 keys spread over every master: \(byMaster)")
        await client.shutdown()
    }

    /// A slot migrating: a new key is asked at the importing node (ASK, then ASKING); once the slot
    /// moved, the old owner answers MOVED and the client follows it and updates its map.
    @Test func askAndMovedRedirectsAreFollowed() async throws {
        let client = try TestCluster.client()
        let tag = "{test:move:\(UInt32.random(in: 0...UInt32.max))}"
        let old = "\(tag):old", new = "\(tag):new"
        _ = try await client.send(["SET", .string(old), "before", "PX", "60000"])
        let topology = try #require(client.topology)
        let slot = HashSlot.of(old)
        let source = try #require(topology.master(ofSlot: slot))
        let masters = topology.allMasters.sorted { $0.port < $1.port }
        let target = try #require(masters.first { $0 != source })
        try await TestCluster.move(slot: slot, from: source, to: target, masters: masters) {
            // The source does not have `new`: it answers ASK, and the target takes it after ASKING.
            _ = try await client.send(["SET", .string(new), "during", "PX", "60000"])
        }
        let owner = TestCluster.node(target)
        #expect(try await owner.send(["GET", .string(new)]).string == "during", "written at the importing node")
        await owner.shutdown()
        // The client's map still names the source: it is told MOVED and follows.
        #expect(try await client.send(["GET", .string(old)]).string == "before")
        #expect(try await client.send(["GET", .string(new)]).string == "during")
        #expect(client.topology?.master(ofSlot: slot) == target, "the map follows the redirect")
        // Back where it was, for the other tests.
        try await TestCluster.move(slot: slot, from: target, to: source, masters: masters)
        #expect(try await client.send(["GET", .string(old)]).string == "before")
        await client.shutdown()
    }

    /// A script missing on a master (flushed, or a newly promoted replica) is loaded again there.
    @Test func scriptsAreLoadedOnEveryMaster() async throws {
        let client = try TestCluster.client()
        let script = RedisScript("return redis.call('INCR', KEYS[1])")
        let prefix = "test:script:\(UInt32.random(in: 0...UInt32.max))"
        let keys = (0..<30).map { "\(prefix):\($0)" }
        for key in keys { #expect(try await client.evaluate(script, keys: [key], arguments: []).int == 1) }
        for master in try await client.masters() { _ = try await master.send(["SCRIPT", "FLUSH"]) }
        for key in keys { #expect(try await client.evaluate(script, keys: [key], arguments: []).int == 2) }
        for key in keys { _ = try await client.send(["DEL", .string(key)]) }
        await client.shutdown()
    }

    /// A shard channel whose slot moves: Redis ends the subscription (`sunsubscribe`), the
    /// subscriber subscribes again at the new owner and says the channel may have missed messages.
    @Test func aShardChannelFollowsItsSlot() async throws {
        let client = try TestCluster.client()
        let channel = "ev:{test:pubsub:\(UInt32.random(in: 0...UInt32.max))}"
        let received = Mutex<[String]>([])
        let resubscribed = Mutex<[String]>([])
        let subscriber = RedisShardedSubscriber(
            cluster: try TestCluster.client(), onResubscribed: { channels in resubscribed.withLock { $0 += channels } },
            onMessage: { _, payload in received.withLock { $0.append(String(buffer: payload)) } })
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await subscriber.run() }
            #expect(await subscriber.waitUntilConnected(timeout: .seconds(10)))
            try await subscriber.subscribe(channel)
            try await eventually { subscriber.subscriptions.channels == 1 }
            _ = try await client.send(["SPUBLISH", .string(channel), "one"])
            try await eventually { received.withLock { $0 } == ["one"] }

            let topology = try #require(client.topology)
            let slot = HashSlot.of(channel)
            let source = try #require(topology.master(ofSlot: slot))
            let masters = topology.allMasters.sorted { $0.port < $1.port }
            let target = try #require(masters.first { $0 != source })
            // (A first subscription made before the connection to its master was up counts too.)
            let before = resubscribed.withLock { $0.count }
            try await TestCluster.move(slot: slot, from: source, to: target, masters: masters)
            try await eventually { resubscribed.withLock { $0 } == Array(repeating: channel, count: before + 1) }
            _ = try await client.send(["SPUBLISH", .string(channel), "two"])
            try await eventually { received.withLock { $0 } == ["one", "two"] }

            try await TestCluster.move(slot: slot, from: target, to: source, masters: masters)
            try await eventually { resubscribed.withLock { $0 } == Array(repeating: channel, count: before + 2) }
            await subscriber.stop()
            group.cancelAll()
        }
        await client.shutdown()
    }

    private func eventually(seconds: Double = 10, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1_000))
        while !condition() {
            guard ContinuousClock.now < deadline else {
                Issue.record("not within \(seconds) s")
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}
