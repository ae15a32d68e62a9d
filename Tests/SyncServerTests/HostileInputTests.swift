import Foundation
import NIOCore
import NIOPosix
import PlaybackCore
import Testing

/// Hostile input, each case with the answer the protocol gives it. Together with the cases in
/// AuthTests, BadInputTests and LeaseTests this is the catalogue in docs/reliability.md; the
/// daemon must answer each one and keep serving everyone else.
@Suite("hostile input")
struct HostileInputTests {
    func error(_ client: TestClient) async throws -> ServerMessage.ErrorReply? {
        guard case .error(let error) = try await client.expect("error") else { return nil }
        return error
    }

    @Test func malformedPayloadsAreRefusedOneByOneAndTheSessionLives() async throws {
        try await TestServer.with { server in
            let (phone, _) = try await server.device("phone")
            let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
            let cases: [(name: String, text: String, code: PlaybackError.Code)] = [
                ("deep nesting", #"{"type":"command","id":"d","op":"seek","args":{"position_ms":"# + deep + "}}", .badRequest),
                ("a JSON array", "[1,2,3]", .badRequest),
                ("an empty message", "", .badRequest),
                ("a number that does not fit", #"{"type":"command","id":"h","op":"seek","args":{"position_ms":123456789012345678901234567890}}"#, .badRequest),
                ("NaN as a string", #"{"type":"command","id":"x","op":"volume","args":{"percent":"NaN"}}"#, .badRequest),
                ("a fractional volume", #"{"type":"command","id":"f","op":"volume","args":{"percent":50.5}}"#, .badRequest),
                ("null where an object goes", #"{"type":"command","id":"z","op":"play","args":null}"#, .badRequest),
                ("a type that is not a string", #"{"type":7}"#, .badRequest),
                ("an id that is an object", #"{"type":"command","id":{"a":1},"op":"pause"}"#, .badRequest),
                ("an unknown op", #"{"type":"command","id":"u","op":"rm -rf"}"#, .unknownOp),
            ]
            for (index, item) in cases.enumerated() {
                try await phone.sendText(item.text)
                #expect(try await error(phone)?.code == item.code, "\(item.name)")
                // A valid message between them: many malformed ones in a row close the session (BadInputTests).
                guard case .ack = try await phone.command("ok\(index)", .volume(percent: index)) else {
                    Issue.record("the session did not survive \(item.name)")
                    return
                }
            }
        }
    }

    @Test func negativeAndHugePositionsAreClampedNotTrusted() async throws {
        try await TestServer.with { server in
            let (phone, _) = try await server.device("phone")
            try await phone.command("p", .play(.init(trackID: "t0001", device: "phone")))
            guard case .ack = try await phone.command("neg", .seek(positionMs: -5_000)) else { Issue.record("negative seek refused"); return }
            #expect(try await phone.state { $0.positionMs == 0 }.state.track?.id == "t0001", "clamped at 0")
            guard case .ack = try await phone.command("far", .seek(positionMs: Int64.max)) else { Issue.record("huge seek refused"); return }
            #expect(try await phone.state { $0.track?.id != "t0001" || !$0.isPlaying }.cause.op == "seek", "past the end behaves like next")
        }
    }

    @Test func aSecondHelloIsRefusedAndTheSessionStays() async throws {
        try await TestServer.with { server in
            let (phone, _) = try await server.device("phone")
            try await phone.send(.hello(.init(device: .init(id: "laptop", name: "Laptop", kind: .computer))))
            #expect(try await error(phone)?.code == .badRequest)
            #expect(try await phone.command("still", .volume(percent: 4)) == .ack(.init(id: "still", version: 1)))
        }
    }

    @Test func nothingNamesAnotherUsersDevice() async throws {
        try await TestServer.with { server in
            let (mallory, _) = try await server.device("mallory-phone", user: "mallory")
            let (victim, _) = try await server.device("victim-speaker", user: "victim")
            guard case .error(let refused) = try await mallory.command("t", .transfer(device: "victim-speaker", play: true)) else {
                Issue.record("a transfer reached another user's device")
                return
            }
            #expect(refused.code == .deviceNotFound)
            let play = try await mallory.refused("p", .play(.init(trackID: "t0001", device: "victim-speaker")))
            #expect(play.code == .deviceNotFound)
            #expect(await victim.next(timeout: .milliseconds(300)) == nil, "the victim heard nothing")
        }
    }

    @Test func reportsWithAFutureOrStaleEpochChangeNothing() async throws {
        try await TestServer.with { server in
            let (phone, _) = try await server.device("phone")
            try await phone.command("p", .play(.init(trackID: "t0001", device: "phone")))
            try await phone.send(.report(.init(id: "future", epoch: 1_000_000, positionMs: 90_000, isPlaying: false, trackID: "t0001")))
            #expect(try await error(phone)?.code == .staleEpoch)
            try await phone.send(.trackEnded(.init(id: "old", epoch: 0, trackID: "t0001")))
            #expect(try await error(phone)?.code == .staleEpoch)
            let state = try await server.engine.snapshot(user: .init(userID: "alice.\(server.namespace)")).state
            #expect(state.isPlaying && state.version == 1, "neither report changed anything")
        }
    }

    @Test func reservedBitsAndBadCloseCodesClose1002() async throws {
        try await TestServer.with { server in
            let (reserved, _) = try await server.device("one")
            try await reserved.sendFrame(opcode: 0x1, payload: Array(#"{"type":"clock","t0":1}"#.utf8), rsv2: true)
            #expect(await reserved.expectClose() == 1002, "RSV2 without an extension")
            let (badClose, _) = try await server.device("two")
            try await badClose.sendFrame(opcode: 0x8, payload: [0x03, 0xE7])  // close code 999
            #expect(await badClose.expectClose() == 1002, "close code 999 is not a valid code")
        }
    }

    @Test func aSlowlorisUpgradeDoesNotHoldTheServer() async throws {
        try await TestServer.with { server in
            // Half a request line, then silence; meanwhile everybody else is served.
            let socket = try await ClientSocket.connect(port: server.port)
            try await socket.write("GET /v1/connect HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
            let (phone, _) = try await server.device("phone")
            #expect(try await phone.command("ok", .volume(percent: 5)) == .ack(.init(id: "ok", version: 1)))
            await socket.close()
        }
    }
}

/// A raw TCP client for requests that never finish.
struct ClientSocket {
    let channel: any Channel

    static func connect(port: Int) async throws -> ClientSocket {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get()
        return ClientSocket(channel: channel)
    }

    func write(_ text: String) async throws {
        try await channel.writeAndFlush(ByteBuffer(string: text))
    }

    func close() async {
        try? await channel.close()
    }
}
