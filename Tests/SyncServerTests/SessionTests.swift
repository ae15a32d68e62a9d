import Foundation
import PlaybackCore
import Testing

@Suite("sessions: welcome, commands, broadcast")
struct SessionTests {
    @Test(arguments: EngineKind.allCases)
    func welcomeCarriesTheFullStateOfAFreshUser(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let (_, welcome) = try await server.device("phone")
            #expect(welcome.state == Playback.initial.playerState())
            #expect(welcome.changed)
            #expect(welcome.heartbeatMs == 15_000)
            #expect(welcome.limits == .init(maxMessageBytes: 65_536, messagesPerS: 100))
            #expect(welcome.devices.map(\.id) == ["phone"])
            #expect(welcome.devices.first?.online == true && welcome.devices.first?.active == false)
            #expect(!welcome.session.isEmpty)
        }
    }

    @Test(arguments: EngineKind.allCases)
    func welcomeSaysUnchangedWhenLastSeenIsCurrent(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let (phone, _) = try await server.device("phone")
            try await phone.command("r1", .volume(percent: 30))
            let client = try await server.connect()
            let welcome = try await client.hello("laptop", lastSeen: .init(epoch: 0, version: 1))
            #expect(!welcome.changed && welcome.state.volume == 30)
            let other = try await server.connect()
            #expect(try await other.hello("tv", lastSeen: .init(epoch: 0, version: 0)).changed)
        }
    }

    @Test(arguments: EngineKind.allCases)
    func devicesEventsFollowConnectsAndDisconnects(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let (phone, _) = try await server.device("phone")
            let (laptop, _) = try await server.device("laptop", kind: .computer)
            guard case .devices(let devices) = try await phone.nextMessage(skipping: []) else { Issue.record("no devices"); return }
            #expect(Set(devices.map(\.id)) == ["phone", "laptop"])
            try await laptop.sendClose(code: 1000)
            guard case .devices(let after) = try await phone.nextMessage(skipping: []) else { Issue.record("no devices"); return }
            #expect(after.first { $0.id == "laptop" }?.online == false)
        }
    }

    @Test(arguments: EngineKind.allCases, [2, 4])
    func everyDeviceSeesTheSameVersionsInOrder(engine: EngineKind, devices count: Int) async throws {
        try await TestServer.with(engine: engine) { server in
            var clients: [TestClient] = []
            for index in 0..<count { clients.append(try await server.device("d\(index)").0) }
            try await clients[0].command("p", .play(.init(trackID: "t0001")))
            for index in 1...20 {
                try await clients[index % count].command("v\(index)", .volume(percent: index))
            }
            for client in clients {
                var versions: [Int64] = []
                while versions.last != 21 {
                    guard case .state(let event) = try await client.expect("state") else { continue }
                    versions.append(event.state.version)
                }
                #expect(versions == Array(1...21), "strictly increasing, none missing")
            }
        }
    }

    @Test(arguments: EngineKind.allCases)
    func commandsAreAckedAndBroadcastWithTheirCause(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let (phone, _) = try await server.device("phone")
            let (speaker, _) = try await server.device("speaker", kind: .speaker)
            let answer = try await phone.command("r-1", .play(.init(trackID: "t0042", context: .init(kind: "album", id: "a05"), device: "speaker")))
            guard case .ack(let ack) = answer else { Issue.record("\(answer)"); return }
            #expect(ack.version == 1)
            let event = try await phone.state()
            #expect(event.cause == .init(op: "play", device: "phone", request: "r-1"))
            #expect(event.state.activeDevice == "speaker" && event.state.track?.id == "t0042" && event.state.isPlaying)
            #expect(event.state.queue != nil, "play loads new content, so the queue is part of the event")
            guard case .leaseGranted(let grant) = try await speaker.expect("lease_granted") else { return }
            #expect(grant.epoch == 1 && grant.state.queue != nil)
            let volume = try await speaker.command("r-2", .volume(percent: 10))
            #expect(volume == .ack(.init(id: "r-2", version: 2)))
            let volumeEvent = try await phone.state { $0.version == 2 }
            #expect(volumeEvent.state.queue == nil, "queue left out when it did not change")
        }
    }

    @Test(arguments: EngineKind.allCases)
    func queueAddAckCarriesTheEntry(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let (phone, _) = try await server.device("phone")
            let ack = try await phone.acked("q", .queueAdd(trackID: "t0002", at: .end))
            #expect(ack.entry != nil)
            let event = try await phone.state()
            #expect(event.state.queue?.map(\.entry) == [ack.entry].compactMap { $0 })
        }
    }

    @Test(arguments: EngineKind.allCases)
    func aRepeatedRequestIdIsAnsweredAgainAndAppliedOnce(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let (phone, _) = try await server.device("phone")
            try await phone.command("p", .play(.init(trackID: "t0001")))
            let first = try await phone.command("same", .queueAdd(trackID: "t0002", at: .end))
            let second = try await phone.command("same", .queueAdd(trackID: "t0002", at: .end))
            #expect(first == second)
            let failed = try await phone.command("bad", .seek(positionMs: 1))
            #expect(try await phone.command("bad", .volume(percent: 5)) == failed, "the first final answer is remembered")
            let laptop = try await server.connect()
            let welcome = try await laptop.hello("laptop")
            #expect(welcome.state.queue?.count == 1)
            #expect(welcome.state.version == 3, "play, queue_add, seek: three versions")
        }
    }

    @Test(arguments: EngineKind.allCases)
    func ifVersionMismatchIsAConflictWithTheCurrentVersion(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let (phone, _) = try await server.device("phone")
            try await phone.command("v1", .volume(percent: 50))
            let answer = try await phone.command("v2", .volume(percent: 60), ifVersion: 0)
            guard case .error(let error) = answer else { Issue.record("\(answer)"); return }
            #expect(error.code == .versionConflict && error.version == 1)
            #expect(try await phone.command("v3", .volume(percent: 60), ifVersion: 1) == .ack(.init(id: "v3", version: 2)))
        }
    }

    @Test(arguments: EngineKind.allCases)
    func aCommandThatChangesNothingIsAckedWithoutABroadcast(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let (phone, _) = try await server.device("phone")
            try await phone.command("v1", .volume(percent: 50))
            _ = try await phone.state { $0.version == 1 }
            #expect(try await phone.command("v2", .volume(percent: 50)) == .ack(.init(id: "v2", version: 1)))
            try await phone.command("v3", .volume(percent: 51))
            #expect(try await phone.state().state.version == 2, "no state for the no-op")
        }
    }

    @Test(arguments: EngineKind.allCases)
    func usersAreIsolated(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let (alicePhone, _) = try await server.device("phone", user: "alice")
            let (bob, _) = try await server.device("bob-phone", user: "bob")
            try await alicePhone.command("a", .play(.init(trackID: "t0001")))
            let answer = try await bob.command("b", .transfer(device: "phone", play: true))
            guard case .error(let error) = answer else { Issue.record("\(answer)"); return }
            #expect(error.code == .deviceNotFound)
            try await bob.command("c", .volume(percent: 1))
            let seen = try await bob.state()
            #expect(seen.state.version == 1 && seen.state.volume == 1 && seen.state.track == nil, "bob only sees bob's state")
            let aliceState = try await alicePhone.state()
            #expect(aliceState.state.volume == 100)
        }
    }

    @Test(arguments: EngineKind.allCases)
    func clockEchoesT0WithServerTime(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let (phone, _) = try await server.device("phone")
            let before = Int64(Date().timeIntervalSince1970 * 1_000)
            try await phone.send(.clock(t0: .double(12.5)))
            guard case .clock(let t0, let serverTime) = try await phone.nextMessage() else { Issue.record("no clock"); return }
            #expect(t0 == .double(12.5))
            #expect(abs(serverTime - before) < 5_000)
        }
    }
}
