import Foundation
import NIOCore
import PlaybackCore
import Testing

@Suite("limits and bad input")
struct BadInputTests {
    func errorCode(_ client: TestClient) async throws -> PlaybackError.Code? {
        guard case .error(let error) = try await client.expect("error") else { return nil }
        return error.code
    }

    @Test func noHelloInTimeCloses1008() async throws {
        // Long enough for a loaded machine to finish the upgrade before the timer runs out.
        try await TestServer.with({ $0.helloTimeoutMs = 3_000 }) { server in
            let client = try await server.connect()
            #expect(await client.expectClose() == 1008)
        }
    }

    @Test(arguments: [
        #"{"type":"clock","t0":1}"#,
        #"{"type":"command","id":"x","op":"pause"}"#,
        "not json",
        #"{"type":"hello","device":{"id":"bad id","name":"x","kind":"tv"}}"#,
    ])
    func anythingButAValidHelloFirstCloses1008(first: String) async throws {
        try await TestServer.with { server in
            let client = try await server.connect()
            try await client.sendText(first)
            #expect(await client.expectClose() == 1008)
        }
    }

    @Test func malformedMessagesGetBadRequestAndTheConnectionStays() async throws {
        try await TestServer.with { server in
            let (phone, _) = try await server.device("phone")
            let cases: [(String, PlaybackError.Code)] = [
                ("not json", .badRequest),
                (#"{"no":"type"}"#, .badRequest),
                (#"{"type":"dance"}"#, .badRequest),
                (#"{"type":"command","id":"u","op":"explode"}"#, .unknownOp),
                (#"{"type":"command","id":"w","op":"seek","args":{"position_ms":"soon"}}"#, .badRequest),
                (#"{"type":"command","id":"n","op":"volume","args":{"percent":1e999}}"#, .badRequest),
                (#"{"type":"hello","device":{"id":"phone","name":"Phone","kind":"smartphone"}}"#, .badRequest),
            ]
            for (text, code) in cases {
                try await phone.sendText(text)
                #expect(try await errorCode(phone) == code, "\(text)")
            }
            #expect(try await phone.command("ok", .volume(percent: 9)) == .ack(.init(id: "ok", version: 1)))
        }
    }

    @Test func tenMalformedInARowClose1008AndAValidMessageResetsTheCount() async throws {
        try await TestServer.with { server in
            let (phone, _) = try await server.device("phone")
            for _ in 0..<9 { try await phone.sendText("{") }
            try await phone.send(.clock(t0: .integer(1)))
            for _ in 0..<9 { try await phone.sendText("{") }
            for _ in 0..<9 { #expect(try await errorCode(phone) == .badRequest) }
            _ = try await phone.expect("clock")
            for _ in 0..<9 { #expect(try await errorCode(phone) == .badRequest) }
            try await phone.command("bad-args", .volume(percent: 400))
            #expect(await phone.expectClose() == 1008, "commands with bad arguments count too")
        }
    }

    @Test func binaryFramesClose1003() async throws {
        try await TestServer.with { server in
            let (phone, _) = try await server.device("phone")
            try await phone.sendFrame(opcode: 0x2, payload: [1, 2, 3])
            #expect(await phone.expectClose() == 1003)
        }
    }

    @Test func invalidUTF8Closes1007EvenInAFragment() async throws {
        try await TestServer.with { server in
            let (phone, _) = try await server.device("phone")
            try await phone.sendFrame(opcode: 0x1, payload: [0x7B, 0xC0, 0xAF, 0x7D])
            #expect(await phone.expectClose() == 1007)
            let (laptop, _) = try await server.device("laptop")
            try await laptop.sendFrame(opcode: 0x1, payload: Array(#"{"type":"#.utf8), fin: false)
            try await laptop.sendFrame(opcode: 0x0, payload: [0xED, 0xA0, 0x80], fin: false)
            #expect(await laptop.expectClose() == 1007, "a surrogate fails before the message ends")
        }
    }

    @Test func messagesOverTheLimitClose1009() async throws {
        try await TestServer.with { server in
            let (single, _) = try await server.device("single")
            try await single.sendText(String(repeating: " ", count: 65_537))
            #expect(await single.expectClose() == 1009)
            let (fragmented, _) = try await server.device("fragmented")
            let half = [UInt8](repeating: 0x20, count: 40_000)
            try await fragmented.sendFrame(opcode: 0x1, payload: half, fin: false)
            try await fragmented.sendFrame(opcode: 0x0, payload: half, fin: true)
            #expect(await fragmented.expectClose() == 1009)
            let (exact, _) = try await server.device("exact")
            let padded = #"{"type":"clock","t0":1}"# + String(repeating: " ", count: 65_536 - 23)
            try await exact.sendText(padded)
            _ = try await exact.expect("clock")
        }
    }

    @Test(arguments: [
        (UInt8(0x1), false, false, UInt16(1002)),  // unmasked
        (UInt8(0x3), true, false, 1002),  // reserved opcode
        (UInt8(0x1), true, true, 1002),  // RSV1 without an extension
    ])
    func protocolViolationsClose1002(opcode: UInt8, masked: Bool, rsv1: Bool, code: UInt16) async throws {
        try await TestServer.with { server in
            let (phone, _) = try await server.device("phone")
            try await phone.sendFrame(opcode: opcode, payload: Array(#"{"type":"clock","t0":1}"#.utf8), masked: masked, rsv1: rsv1)
            #expect(await phone.expectClose() == code)
        }
    }

    @Test func oversizedControlFramesClose1002() async throws {
        try await TestServer.with { server in
            let (phone, _) = try await server.device("phone")
            try await phone.sendFrame(opcode: 0x9, payload: [UInt8](repeating: 1, count: 126))
            #expect(await phone.expectClose() == 1002)
        }
    }

    @Test func floodsAreRateLimitedThenClosed4029() async throws {
        try await TestServer.with({
            $0.messagesPerSecond = 5
            $0.messageBurst = 5
            $0.rateLimitStrikes = 20
        }) { server in
            let (phone, _) = try await server.device("phone")
            try? await phone.sendTexts((0..<60).map { #"{"type":"clock","t0":\#($0)}"# })  // within one second, however slow the machine
            var limited: ServerMessage.ErrorReply?
            while limited == nil {
                if case .error(let error) = try await phone.expect("error"), error.code == .rateLimited { limited = error }
            }
            #expect((limited?.retryAfterMs ?? 0) > 0)
            let code = await phone.expectClose()
            #expect(code == 4029)
        }
    }

    @Test func aClientThatStopsReadingIsClosed4008WithoutSlowingOthers() async throws {
        try await TestServer.with(recordingLogs: true, {
            $0.sendBufferBytes = 64 * 1_024
            $0.messagesPerSecond = 10_000
            $0.messageBurst = 10_000
        }) { server in
            let stalled = try await server.connect(receiveBuffer: 4_096, autoRead: false)
            try await stalled.send(.hello(.init(device: .init(id: "stalled", name: "Stalled", kind: .tv))))
            let (phone, _) = try await server.device("phone")
            try await phone.command("ctx", .play(.init(context: .init(kind: "playlist", id: "p1"))))
            // Each shuffle toggle reorders the queue, so every state carries the 25-entry queue
            // (about 3.5 KB): 3,000 of them exceed what the kernel buffers for a socket.
            for index in 0..<3_000 {
                try await phone.send(.command(.init(id: "s\(index)", command: .setShuffle(index % 2 == 0))))
            }
            let last = try await phone.state { $0.version == 3_001 }
            #expect(!last.state.shuffle, "the other device got every version while one client stalled")
            // The stalled client now reads what was buffered for it: the server gave up on it.
            try await stalled.channel.setOption(ChannelOptions.autoRead, value: true).get()
            stalled.channel.read()
            var ended = false
            while let event = await stalled.next(timeout: .seconds(10)) {
                if case .message = event { continue }
                ended = true
                break
            }
            #expect(ended, "the stalled connection was closed")
            #expect(!server.logs.entries("close handshake", where: ["device.id": "stalled", "close.code": "4008"]).isEmpty, "closed with 4008")
        }
    }

    @Test func aUserHasACapOnConnectedDevices() async throws {
        try await TestServer.with({ $0.engine.maxDevicesPerUser = 3 }) { server in
            for index in 0..<3 { _ = try await server.device("d\(index)") }
            let extra = try await server.connect()
            try await extra.send(.hello(.init(device: .init(id: "d3", name: "D3", kind: .other))))
            #expect(await extra.expectClose() == 1008)
            let (_, welcome) = try await server.device("d0")
            #expect(welcome.devices.count == 3, "a reconnect of a known device is not refused")
        }
    }
}
