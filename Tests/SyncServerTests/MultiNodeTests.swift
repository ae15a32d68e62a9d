import Foundation
import PlaybackCore
import PlaybackEngine
import RedisClient
import SyncServer
import Testing

/// Several daemons (in-process, each with its own port and RedisEngine) on one redis-server.
@Suite("several daemons on one Redis", .enabled(if: ProcessInfo.processInfo.environment["PLAYBACK_REDIS_URL"] != nil || ProcessInfo.processInfo.environment["CI"] == "true", "needs PLAYBACK_REDIS_URL"))
struct MultiNodeTests {
    static func cluster<T>(
        _ count: Int, configure: (inout ServerConfiguration) -> Void = { _ in }, _ body: ([TestServer]) async throws -> T
    ) async throws -> T {
        let namespace = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        var nodes: [TestServer] = []
        do {
            // None of these tests is about expiry: the default grace (the lock's TTL) keeps a lease
            // from lapsing when a loaded machine renews it seconds late.
            for _ in 0..<count {
                nodes.append(try await TestServer.start(engine: .redis, namespace: namespace) {
                    $0.engine.graceMs = 10_000
                    configure(&$0)
                })
            }
            let result = try await body(nodes)
            for node in nodes { await node.stop() }
            return result
        } catch {
            for node in nodes { await node.stop() }
            throw error
        }
    }

    @Test func aCommandOnOneNodeReachesDevicesOnTheOthersInVersionOrder() async throws {
        try await Self.cluster(3) { nodes in
            var devices: [TestClient] = []
            for (index, node) in nodes.enumerated() { devices.append(try await node.device("d\(index)").0) }
            try await devices[0].command("p", .play(.init(trackID: "t0001", device: "d0")))
            for index in 1...20 { try await devices[index % 3].command("v\(index)", .volume(percent: index)) }
            for device in devices {
                var versions: [Int64] = []
                while versions.last != 21 {
                    guard case .state(let event) = try await device.expect("state") else { continue }
                    versions.append(event.state.version)
                }
                #expect(versions == Array(1...21), "strictly increasing, none missing, on every node")
            }
        }
    }

    @Test func transferBetweenDevicesOnDifferentNodes() async throws {
        try await Self.cluster(2) { nodes in
            let (speaker, _) = try await nodes[0].device("speaker")
            let (phone, _) = try await nodes[1].device("phone")
            let started = ContinuousClock.now
            try await phone.command("p", .play(.init(trackID: "t0001", positionMs: 20_000, device: "speaker")))
            guard case .leaseGranted = try await speaker.expect("lease_granted") else { return }
            try await Task.sleep(for: .milliseconds(400))
            try await speaker.command("t", .transfer(device: "phone", play: nil))
            guard case .leaseRevoked(let revoked) = try await speaker.expect("lease_revoked") else { return }
            #expect(revoked.reason == .transferred && revoked.by == "phone", "\(revoked)")
            guard case .leaseGranted(let granted) = try await phone.expect("lease_granted") else { return }
            let elapsedMs = milliseconds(since: started)
            #expect(granted.state.isPlaying && (20_300...20_000 + elapsedMs).contains(granted.state.positionMs), "\(granted.state.positionMs) after \(elapsedMs) ms")
        }
    }

    /// A REST transfer made on a node with no device of the user, which then goes away: the node
    /// holding the devices undoes the unconfirmed transfer by itself.
    @Test func anUnconfirmedTransferIsUndoneWhenTheNodeThatMadeItIsGone() async throws {
        // A long grace: the phone's lease must not lapse on a loaded machine meanwhile.
        let namespace = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let nodes = [
            try await TestServer.start(engine: .redis, namespace: namespace) {
                $0.engine.graceMs = 10_000
                $0.engine.limits.transferConfirmMs = 600
            },
            try await TestServer.start(engine: .redis, namespace: namespace) {
                $0.engine.graceMs = 10_000
                $0.engine.limits.transferConfirmMs = 600
            },
        ]
        let (devicesNode, restNode) = (nodes[0], nodes[1])
        let (phone, _) = try await devicesNode.device("phone")
        let (speaker, _) = try await devicesNode.device("speaker", kind: .speaker, capabilities: [Capability.transferConfirm])
        try await phone.command("p", .play(.init(trackID: "t0001", device: "phone")))
        _ = try await phone.expect("lease_granted")
        let rest = try await RESTTests().remote(restNode)
        #expect(try await rest.call("PUT", "/v1/me/player", body: #"{"device_ids":["speaker"]}"#).status == 200)
        guard case .leaseGranted(let grant) = try await speaker.expect("lease_granted") else { return }
        #expect(grant.confirmBy != nil)
        // The node that made the transfer (and set the timer) stops at once, before confirm_by: a
        // node shutting down leaves the check to the others.
        await restNode.stop()
        guard case .leaseRevoked(let revoked) = try await speaker.expect("lease_revoked") else { return }
        #expect(revoked.reason == .transferFailed && revoked.by == "phone")
        guard case .leaseGranted(let back) = try await phone.expect("lease_granted") else { return }
        #expect(back.epoch == grant.epoch + 1 && back.state.isPlaying && back.state.positionMs == grant.state.positionMs)
        await devicesNode.stop()
    }

    @Test func aRetriedRequestIdOnAnotherNodeAppliesOnce() async throws {
        try await Self.cluster(2) { nodes in
            let (first, _) = try await nodes[0].device("first")
            let (second, _) = try await nodes[1].device("second")
            let original = try await first.command("same-id", .queueAdd(trackID: "t0002", at: .end))
            let retry = try await second.command("same-id", .queueAdd(trackID: "t0002", at: .end))
            #expect(original == retry)
            let (_, welcome) = try await nodes[1].device("third")
            #expect(welcome.state.queue?.count == 1 && welcome.state.version == 1)
        }
    }

    @Test func aHundredDevicesOverThreeNodesRacingEndWithOneHolder() async throws {
        try await Self.cluster(3) { nodes in
            var clients: [TestClient] = []
            for index in 0..<100 { clients.append(try await nodes[index % 3].device("d\(index)").0) }
            let beliefs = try await withThrowingTaskGroup(of: (Int, LeaseTests.LeaseBelief, [Int64]).self) { group in
                for (index, client) in clients.enumerated() {
                    group.addTask {
                        let command: Command = index % 4 == 3
                            ? .transfer(device: "d\((index * 7) % 100)", play: true)
                            : .play(.init(trackID: "t0001", device: "d\(index)"))
                        try await client.send(.command(.init(id: "race-\(index)", command: command)))
                        var belief = LeaseTests.LeaseBelief()
                        var epochs: [Int64] = []
                        while true {
                            let message = try await client.nextMessage(timeout: .seconds(15))
                            belief.observe(message)
                            if case .leaseGranted(let grant) = message { epochs.append(grant.epoch) }
                            if case .leaseRevoked(let revoked) = message { epochs.append(revoked.epoch) }
                            if case .ack(let ack) = message, ack.id == "race-\(index)" { return (index, belief, epochs) }
                            if case .error(let error) = message, error.id == "race-\(index)" { return (index, belief, epochs) }
                        }
                    }
                }
                var all = [(LeaseTests.LeaseBelief, [Int64])](repeating: (LeaseTests.LeaseBelief(), []), count: clients.count)
                for try await (index, belief, epochs) in group { all[index] = (belief, epochs) }
                return all
            }
            try await clients[0].send(.command(.init(id: "final", command: .volume(percent: 42))))
            var finals: [PlayerState] = []
            var believers: [String] = []
            for (index, client) in clients.enumerated() {
                var belief = beliefs[index].0
                var epochs = beliefs[index].1
                while true {
                    let message = try await client.nextMessage(timeout: .seconds(15))
                    belief.observe(message)
                    if case .leaseGranted(let grant) = message { epochs.append(grant.epoch) }
                    if case .leaseRevoked(let revoked) = message { epochs.append(revoked.epoch) }
                    if case .state(let event) = message, event.state.volume == 42 {
                        finals.append(event.state)
                        break
                    }
                }
                #expect(zip(epochs, epochs.dropFirst()).allSatisfy { $0 < $1 }, "device d\(index) saw epochs \(epochs)")
                if belief.active { believers.append("d\(index)") }
            }
            #expect(Set(finals.map(\.version)).count == 1, "every device converges on one version")
            #expect(Set(finals.map(\.activeDevice)).count == 1)
            // Exactly the device the state names believes it is active (nobody, if a machine too
            // loaded to renew the lease in time let it expire).
            let holder = finals.first?.activeDevice
            #expect(believers == (holder.map { [$0] } ?? []), "believing: \(believers), the state names \(holder ?? "nobody")")
        }
    }

    /// All of the user's devices were on the node that went away: another node, with none of them,
    /// still expires the lease within the grace period and a second (its sweep of lapsed leases).
    @Test func aLeaseIsExpiredByANodeWithNoDeviceOfTheUser() async throws {
        let namespace = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let doomed = try await TestServer.start(engine: .redis, namespace: namespace) { $0.engine.graceMs = 2_000 }
        let survivor = try await TestServer.start(engine: .redis, namespace: namespace) { $0.engine.graceMs = 2_000 }
        let (holder, _) = try await doomed.device("holder")
        let played = ContinuousClock.now
        try await holder.command("p", .play(.init(trackID: "t0001", device: "holder")))
        let user = UserIdentity(userID: "alice.\(namespace)")
        #expect(try await survivor.engine.snapshot(user: user).state.activeDevice == "holder")
        await doomed.stop()
        let stopped = ContinuousClock.now
        let playedUntilStopped = milliseconds(since: played)
        let expired = try await eventually(timeout: .seconds(8)) {
            try await survivor.engine.snapshot(user: user).state.activeDevice == nil
        }
        let elapsed = milliseconds(since: stopped)
        #expect(expired, "the survivor expired the lease")
        // Grace + 1 s, plus two seconds for a loaded test machine.
        #expect(elapsed <= 5_000, "expired \(elapsed) ms after the node went away")
        let state = try await survivor.engine.snapshot(user: user).state
        // Paused where it was when the holder was last known (its last renewal, else a TTL of 2 s
        // before the expiry), not where the track got to by the expiry: a second or more before it,
        // however long a loaded machine took.
        let playedUntilExpired = playedUntilStopped + elapsed
        #expect(!state.isPlaying && state.epoch == 2 && state.positionMs <= playedUntilExpired - 1_000, "\(state) after \(playedUntilExpired) ms")
        await survivor.stop()
    }

    /// Redis loses a user (its keys gone, as after a restart without persistence) and there is no
    /// PostgreSQL: the daemons' caches bring the state back (the newest any of them held wins),
    /// above every epoch and version the devices saw, so they keep applying changes; the holder is
    /// granted the lease again at the new epoch.
    @Test func aUserLostByRedisWithoutPostgresComesBackFromTheDaemonsAboveWhatItsDevicesSaw() async throws {
        // A settling window wide enough that the first command after the loss falls in it on a
        // loaded machine too (with the default 1 s, an upkeep tick could restore and settle first).
        try await Self.cluster(2, configure: { $0.engine.restoreSettleMs = 4_000 }) { nodes in
            let (phone, _) = try await nodes[0].device("phone")
            let (laptop, _) = try await nodes[1].device("laptop")
            try await phone.command("p", .play(.init(trackID: "t0001", device: "phone")))
            for index in 1...3 { try await phone.command("v\(index)", .volume(percent: index)) }
            _ = try await laptop.state { $0.version == 4 }
            let tag = "{u:alice.\(nodes[0].namespace)}"
            let url = try RedisConfiguration(url: EngineKind.redisURL)
            // `-c` follows a cluster's redirects to the master of the user's slot.
            _ = try runProgram("/usr/bin/redis-cli", (url.isCluster ? ["-c"] : []) + ["-h", url.host, "-p", String(url.port), "-n", String(url.database),
                                                      "DEL", "pb:\(tag)", "lock:\(tag)", "dev:\(tag)", "online:\(tag)"])
            // Refused with a retry hint while the restore settles (another node might hold a newer snapshot).
            let (ack, refusals) = try await laptop.ackedOnceAvailable("after", .volume(percent: 50))
            #expect(!refusals.isEmpty && refusals.allSatisfy { ($0.retryAfterMs ?? 0) > 0 && ($0.retryAfterMs ?? 0) <= 4_000 }, "\(refusals)")
            #expect(ack.version > 4, "versions go on above what the devices saw: \(ack.version)")
            var granted: ServerMessage.LeaseGranted?
            while true {
                let message = try await phone.nextMessage()
                if case .leaseGranted(let message) = message { granted = message }
                if case .state(let event) = message, event.state.volume == 50 {
                    #expect(event.state.version == ack.version && event.state.epoch > 1, "\(event.state)")
                    #expect(event.state.activeDevice == "phone" && event.state.track?.id == "t0001", "the state came back: \(event.state)")
                    break
                }
            }
            #expect((granted?.epoch ?? 0) > 1, "the holder was granted the lease at the new epoch")
        }
    }

    /// Redis goes back in time (a failover lost acknowledged writes: the promoted replica has an
    /// older state): the next command finds it older than what the node saw and restores above it,
    /// so the devices keep applying changes and versions never repeat.
    @Test func aStateOlderThanTheDevicesSawIsRestoredAboveIt() async throws {
        try await Self.cluster(2) { nodes in
            let (phone, _) = try await nodes[0].device("phone")
            let (laptop, _) = try await nodes[1].device("laptop")
            try await phone.command("p", .play(.init(trackID: "t0001", device: "phone")))
            try await phone.command("v1", .volume(percent: 11))
            _ = try await laptop.state { $0.version == 2 }
            let tag = "{u:alice.\(nodes[0].namespace)}"
            let url = try RedisConfiguration(url: EngineKind.redisURL)
            let cli = ["/usr/bin/redis-cli"] + (url.isCluster ? ["-c"] : []) + ["-h", url.host, "-p", String(url.port), "-n", String(url.database)]
            let old = try runProgram(cli[0], Array(cli.dropFirst()) + ["HGET", "pb:\(tag)", "state"]).output
            for index in 2...4 { try await phone.command("v\(index)", .volume(percent: 10 + index)) }
            _ = try await laptop.state { $0.version == 5 }
            // Back to version 2, as a replica that missed the last three writes would have it.
            let state = old.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(state.hasPrefix("{"), "the stored state: \(state)")
            _ = try runProgram(cli[0], Array(cli.dropFirst()) + ["HSET", "pb:\(tag)", "version", "2", "state", state])
            let (ack, _) = try await laptop.ackedOnceAvailable("after", .volume(percent: 50))
            #expect(ack.version > 5, "versions go on above what the devices saw: \(ack.version)")
            let seen = try await phone.state { $0.volume == 50 }
            #expect(seen.state.version == ack.version && seen.state.epoch > 1, "\(seen.state)")
        }
    }

    /// Thirty devices of one user on three nodes race to play on themselves: every unconditional
    /// command is acked (never refused for contention alone: the losers back off with jitter and
    /// try again), and the devices end on one state with one holder.
    @Test func thirtyDevicesOnThreeNodesRacingArePlayedEachWithoutARefusal() async throws {
        try await Self.cluster(3) { nodes in
            var clients: [TestClient] = []
            for index in 0..<30 { clients.append(try await nodes[index % 3].device("d\(index)").0) }
            let answers = try await withThrowingTaskGroup(of: ServerMessage.self) { group in
                for (index, client) in clients.enumerated() {
                    group.addTask { try await client.command("race-\(index)", .play(.init(trackID: "t0001", device: "d\(index)"))) }
                }
                var answers: [ServerMessage] = []
                for try await answer in group { answers.append(answer) }
                return answers
            }
            let refused = answers.filter { if case .ack = $0 { false } else { true } }
            #expect(refused.isEmpty, "refused: \(refused)")
            let versions = answers.compactMap { if case .ack(let ack) = $0 { ack.version } else { nil } }
            #expect(Set(versions).count == 30, "thirty changes, thirty versions: \(versions.sorted())")
            _ = try await clients[0].acked("final", .volume(percent: 42))
            var holders: Set<String?> = []
            for client in clients { holders.insert(try await client.state { $0.volume == 42 }.state.activeDevice) }
            #expect(holders.count == 1 && holders.first! != nil, "one holder everywhere: \(holders)")
        }
    }

    /// The device cap holds across nodes: devices racing to connect to two nodes never exceed it.
    @Test func theDeviceCapHoldsAcrossNodes() async throws {
        let namespace = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let nodes = [
            try await TestServer.start(engine: .redis, namespace: namespace) { $0.engine.maxDevicesPerUser = 3 },
            try await TestServer.start(engine: .redis, namespace: namespace) { $0.engine.maxDevicesPerUser = 3 },
        ]
        let welcomed = try await withThrowingTaskGroup(of: TestClient?.self) { group in
            for index in 0..<8 {
                group.addTask {
                    let client = try await nodes[index % 2].connect()
                    return (try? await client.hello("d\(index)")) == nil ? nil : client
                }
            }
            var welcomed: [TestClient] = []
            for try await client in group { if let client { welcomed.append(client) } }
            return welcomed
        }
        #expect(welcomed.count == 3, "\(welcomed.count) devices connected with a cap of 3")
        let state = try await nodes[0].engine.snapshot(user: UserIdentity(userID: "alice.\(namespace)"))
        #expect(state.devices.filter(\.online).count == 3)
        for node in nodes { await node.stop() }
    }

    /// A user's REST budget is shared by every node: spreading requests over two nodes does not
    /// double it.
    @Test func theRESTRateLimitIsSharedByTheNodes() async throws {
        let namespace = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        var nodes: [TestServer] = []
        for _ in 0..<2 {
            nodes.append(try await TestServer.start(engine: .redis, namespace: namespace) {
                $0.messagesPerSecond = 1
                $0.messageBurst = 4
            })
        }
        let token = try await nodes[0].token("alice")
        let pair = nodes
        let started = ContinuousClock.now
        let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
            for index in 0..<12 {
                group.addTask { try await pair[index % 2].http("/v1/me/player", headers: ["Authorization": "Bearer \(token)"]).status }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        let seconds = Int(milliseconds(since: started) / 1_000)
        let admitted = statuses.filter { $0 != 429 }.count
        // A burst of 4 plus a token a second while the requests ran: not 4 per node.
        #expect(admitted >= 4 && admitted <= 4 + seconds + 1, "\(statuses) in \(seconds) s")
        for node in nodes { await node.stop() }
    }

    @Test func aLeaseWhoseNodeWentAwayExpiresAndTheOthersLearnIt() async throws {
        let namespace = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let doomed = try await TestServer.start(engine: .redis, namespace: namespace)
        let survivor = try await TestServer.start(engine: .redis, namespace: namespace)
        let (holder, _) = try await doomed.device("holder")
        let (watcher, _) = try await survivor.device("watcher")
        try await holder.command("p", .play(.init(trackID: "t0001", device: "holder")))
        _ = try await watcher.state { $0.activeDevice == "holder" }
        await doomed.stop()
        let expired = try await watcher.state(where: { $0.activeDevice == nil }, timeout: .seconds(10))
        #expect(expired.cause == .init(op: "expired", device: "holder", request: nil))
        #expect(!expired.state.isPlaying && expired.state.epoch == 2)
        await survivor.stop()
    }
}
