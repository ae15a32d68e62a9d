import Foundation
import NIOCore
import NIOWebSocket
import PlaybackCore
import PlaybackEngine
import Testing

@testable import SyncServer

/// The session's rules without sockets: events in with the time advanced by hand, actions out.
/// (The socket tests check the same rules end to end.)
@Suite("session state machine")
struct SessionStateMachineTests {
    typealias Action = SessionStateMachine.Action

    /// One event, at `atMs` after the start (by default 600 ms after the one before: the rate
    /// limit, 2 per second, does not come into a row that does not say when its messages arrive).
    enum Step {
        case text(String, atMs: Int64? = nil)
        case ping(atMs: Int64? = nil)
        case binary
        case peerClose(UInt16?)
        case heartbeat(atMs: Int64)
        case helloTimeout
        case tokenExpired
        case finished(SessionServices.Outcome, ClientMessage)
        case serverClose(CloseCode)
        case sendBufferFull
        case readRequested
        case socketClosed
    }

    struct Row: CustomTestStringConvertible, Sendable {
        let name: String
        let steps: [Step]
        /// The actions of the last step.
        let expected: [Action]
        var phase: SessionStateMachine.Phase?
        var disconnect: DisconnectKind?
        var testDescription: String { name }
    }

    static let hello = #"{"type":"hello","device":{"id":"phone","name":"Phone","kind":"smartphone"}}"#
    static let helloMessage = ClientMessage.hello(.init(device: .init(id: "phone", name: "Phone", kind: .smartphone)))
    static let volume = #"{"type":"command","id":"v","op":"volume","args":{"percent":5}}"#
    static let volumeMessage = ClientMessage.command(.init(id: "v", command: .volume(percent: 5)))
    static let connected: [Step] = [.text(hello), .finished(.connected(device: "phone"), helloMessage)]

    static func close(_ code: CloseCode, _ reason: String) -> Action { .close(.sendClose(code: code.rawValue, reason: reason)) }

    static let rows: [Row] = [
        Row(name: "a valid hello goes to the engine and stops the hello deadline", steps: [.text(hello)],
            expected: [.cancelHelloTimer, .submit(helloMessage)], phase: .connecting),
        Row(name: "anything else first closes 1008", steps: [.text(volume)],
            expected: [close(.policyViolation, "the first message must be a valid hello")]),
        Row(name: "no hello in time closes 1008", steps: [.helloTimeout],
            expected: [close(.policyViolation, "no hello within 1000 ms")]),
        Row(name: "the engine's welcome makes the session active", steps: connected, expected: [], phase: .active),
        Row(name: "a second hello is bad_request", steps: connected + [.text(hello)],
            expected: [.send(.error(.init(id: nil, error: .badRequest("hello was already sent"))))]),
        Row(name: "three malformed messages in a row close 1008", steps: connected + [.text("{"), .text("{"), .text("{")],
            expected: [
                .countMalformed(.badRequest), .send(.error(.init(id: nil, error: .badRequest("the message is not a valid JSON object")))),
                close(.policyViolation, "too many malformed messages in a row"),
            ]),
        Row(name: "a valid message resets the count", steps: connected + [.text("{"), .text("{"), .text(#"{"type":"clock","t0":1}"#), .text("{")],
            expected: [.countMalformed(.badRequest), .send(.error(.init(id: nil, error: .badRequest("the message is not a valid JSON object"))))]),
        Row(name: "past the burst, a message is rate_limited with its id",
            steps: connected + [.text(volume, atMs: 5_000), .text(volume, atMs: 5_000), .text(volume, atMs: 5_000)],
            expected: [.countRateLimited, .send(.error(.init(id: "v", error: PlaybackError(.rateLimited, "more than 2 messages per second", retryAfterMs: 500))))]),
        Row(name: "tokens come back with time",
            steps: connected + [.text(volume, atMs: 5_000), .text(volume, atMs: 5_000), .text(volume, atMs: 5_600)], expected: []),
        Row(name: "sustained abuse closes 4029",
            steps: connected + Array(repeating: Step.text(volume, atMs: 5_000), count: 6),
            expected: [.countRateLimited, close(.rateLimited, "message rate limit exceeded")]),
        Row(name: "a ping is answered", steps: connected + [.ping()], expected: [.pong(ByteBuffer())]),
        Row(name: "pings count toward the rate limit", steps: connected + [.ping(atMs: 5_000), .ping(atMs: 5_000), .ping(atMs: 5_000)],
            expected: [.countRateLimited]),
        Row(name: "a binary message closes 1003", steps: connected + [.binary],
            expected: [close(.unsupportedData, "binary messages are not supported; send JSON text")]),
        Row(name: "a clean close by the client is echoed and releases", steps: connected + [.peerClose(1000)],
            expected: [.close(.echoThenClose(code: 1000))], disconnect: .released),
        Row(name: "1001 from the client releases too", steps: connected + [.peerClose(1001)],
            expected: [.close(.echoThenClose(code: 1001))], disconnect: .released),
        Row(name: "any other close by the client is a loss", steps: connected + [.peerClose(4000)],
            expected: [.close(.echoThenClose(code: 4000))], disconnect: .lost),
        Row(name: "the peer's answer to our close ends the socket", steps: connected + [.serverClose(.goingAway), .peerClose(1001)],
            expected: [.close(.closeSocket)], disconnect: .lost),
        Row(name: "a replacement keeps the lease", steps: connected + [.serverClose(.replaced)],
            expected: [close(.replaced, "test")], disconnect: .replaced),
        Row(name: "a second close sends nothing", steps: connected + [.serverClose(.goingAway), .serverClose(.tooSlow)], expected: []),
        Row(name: "a full send buffer closes 4008", steps: connected + [.sendBufferFull],
            expected: [close(.tooSlow, "too slow to read: send buffer limit reached")]),
        Row(name: "the heartbeat pings a client heard from", steps: connected + [.text(volume, atMs: 1_500), .heartbeat(atMs: 3_000)],
            expected: [.ping]),
        Row(name: "a client silent for two intervals is dropped", steps: connected + [.heartbeat(atMs: 2_601)], expected: [.drop]),
        Row(name: "no ping once closing", steps: connected + [.serverClose(.goingAway), .heartbeat(atMs: 100)], expected: []),
        Row(name: "an expired token closes 1008", steps: connected + [.tokenExpired],
            expected: [close(.policyViolation, "the access token expired")]),
        Row(name: "a refreshed token moves the expiry",
            steps: connected + [.finished(.reauthenticated(expiresAtMs: 90_000, reply: nil), .auth(token: "t", id: nil))],
            expected: [.armExpiryTimer(ms: 90_000)]),
        Row(name: "the end of an active session tells the engine", steps: connected + [.socketClosed],
            expected: [.disconnect(device: "phone", .lost)], phase: .closed),
        Row(name: "a welcome after the socket closed still tells the engine",
            steps: [.text(hello), .socketClosed, .finished(.connected(device: "phone"), helloMessage)],
            expected: [.disconnect(device: "phone", .lost)], phase: .closed),
        Row(name: "one message at a time: the next goes when the engine answers",
            steps: connected + [.text(volume), .text(volume), .finished(.reply(nil, malformed: false), volumeMessage)],
            expected: [.submit(volumeMessage)]),
        Row(name: "reads wait while the queue to the engine is full",
            steps: connected + Array(repeating: Step.text(volume), count: 5) + [.readRequested], expected: []),
        Row(name: "and resume once it drains to half",
            steps: connected + Array(repeating: Step.text(volume), count: 5) + [.readRequested]
                + Array(repeating: Step.finished(.reply(nil, malformed: false), volumeMessage), count: 4),
            expected: [.read, .submit(volumeMessage)]),
        Row(name: "a command counts as valid once the engine accepts it",
            steps: connected + [.text("{"), .text("{"), .text(volume), .finished(.reply(nil, malformed: false), volumeMessage), .text("{")],
            expected: [.countMalformed(.badRequest), .send(.error(.init(id: nil, error: .badRequest("the message is not a valid JSON object"))))]),
        Row(name: "a command the engine finds malformed counts",
            steps: connected + [.text("{"), .text("{"),
                .finished(.reply(.error(.init(id: "v", error: .badRequest("bad"))), malformed: true), volumeMessage)],
            expected: [.send(.error(.init(id: "v", error: .badRequest("bad")))), close(.policyViolation, "too many malformed messages in a row")]),
    ]

    static var settings: SessionStateMachine.Settings {
        var configuration = ServerConfiguration()
        configuration.helloTimeoutMs = 1_000
        configuration.heartbeatMs = 1_000
        configuration.messagesPerSecond = 2
        configuration.messageBurst = 2
        configuration.rateLimitStrikes = 3
        configuration.malformedLimit = 3
        configuration.maxPendingMessages = 4
        return SessionStateMachine.Settings(configuration)
    }

    static func frame(_ opcode: WebSocketOpcode, _ data: ByteBuffer = ByteBuffer()) -> WebSocketFrame {
        WebSocketFrame(fin: true, opcode: opcode, maskKey: WebSocketMaskingKey([0, 0, 0, 0]), data: data)
    }

    @Test(arguments: rows)
    func row(_ row: Row) {
        let startNs: UInt64 = 1_000_000_000
        var machine = SessionStateMachine(settings: Self.settings, expiresAtMs: 60_000, inflates: false, nowNs: startNs)
        func at(_ ms: Int64) -> UInt64 { startNs + UInt64(ms) * 1_000_000 }
        var last: [Action] = []
        var clock: Int64 = 0
        func next(_ ms: Int64?) -> Int64 {
            clock = ms ?? clock + 600
            return clock
        }
        for step in row.steps {
            switch step {
            case .text(let text, let ms):
                let now = next(ms)
                last = machine.frame(Self.frame(.text, ByteBuffer(string: text)), nowNs: at(now), nowMs: now)
            case .ping(let ms):
                let now = next(ms)
                last = machine.frame(Self.frame(.ping), nowNs: at(now), nowMs: now)
            case .binary: last = machine.frame(Self.frame(.binary, ByteBuffer(bytes: [1])), nowNs: at(0), nowMs: 0)
            case .peerClose(let code):
                var payload = ByteBuffer()
                if let code { payload.writeInteger(code) }
                last = machine.frame(Self.frame(.connectionClose, payload), nowNs: at(0), nowMs: 0)
            case .heartbeat(let ms): last = machine.heartbeat(nowNs: at(ms))
            case .helloTimeout: last = machine.helloTimedOut()
            case .tokenExpired: last = machine.tokenExpired()
            case .finished(let outcome, let message): last = machine.finished(outcome, for: message, nowMs: 0)
            case .serverClose(let code): last = machine.close(code, "test")
            case .sendBufferFull: last = machine.sendBufferFull()
            case .readRequested: last = machine.readRequested()
            case .socketClosed: last = machine.closed()
            }
        }
        #expect(last == row.expected)
        if let phase = row.phase { #expect(machine.phase == phase) }
        if let disconnect = row.disconnect { #expect(machine.disconnectKind == disconnect) }
    }

    @Test func thePongToAHeartbeatPingGivesTheRoundTrip() {
        var machine = SessionStateMachine(settings: Self.settings, expiresAtMs: 60_000, inflates: false, nowNs: 0)
        #expect(machine.frame(Self.frame(.pong), nowNs: 1_000_000, nowMs: 1).isEmpty, "an unsolicited pong measures nothing")
        #expect(machine.heartbeat(nowNs: 500_000_000) == [.ping])
        #expect(machine.frame(Self.frame(.pong), nowNs: 512_000_000, nowMs: 512) == [.roundTrip(ns: 12_000_000)])
        #expect(machine.frame(Self.frame(.pong), nowNs: 520_000_000, nowMs: 520).isEmpty, "one measure per ping")
    }

    @Test func openingArmsTheHelloDeadlineAndTheTokenExpiry() {
        let machine = SessionStateMachine(settings: Self.settings, expiresAtMs: 60_000, inflates: false, nowNs: 0)
        #expect(machine.opened(nowMs: 10_000) == [.armHelloTimer(ms: 1_000), .armExpiryTimer(ms: 50_000)])
    }
}

/// The close codes' effects on the lease, against the protocol's table.
@Suite("close policy")
struct ClosePolicyTests {
    static let protocolText: String = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return (try? String(contentsOf: root.appendingPathComponent("protocol/PROTOCOL.md"), encoding: .utf8)) ?? ""
    }()

    @Test func everyCloseCodeOfTheProtocolHasARuleAndNoOther() throws {
        let section = try #require(Self.protocolText.components(separatedBy: "## 9. Close codes").dropFirst().first)
        let table = section.components(separatedBy: "\n## ").first ?? ""
        let codes = Set(table.split(separator: "\n").compactMap { line -> UInt16? in
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            return cells.first.flatMap { UInt16($0) }
        })
        #expect(!codes.isEmpty)
        #expect(codes == Set(ClosePolicy.rules.map(\.code.rawValue)))
        #expect(Set(ClosePolicy.rules.map(\.code)) == Set(CloseCode.allCases))
    }

    @Test func theLeaseEffectsAreThoseOfTheProtocol() {
        // §5: "a client-initiated close with 1000 or 1001 releases at once"; "A 4001 replacement
        // keeps the lease"; every other loss, server-initiated closes included, starts the grace.
        #expect(Self.protocolText.contains("client-initiated close with 1000 or 1001"))
        #expect(Self.protocolText.contains("A 4001 replacement keeps the lease"))
        for rule in ClosePolicy.rules {
            let released: Set<CloseCode> = [.normal, .goingAway]
            #expect(rule.byClient == (released.contains(rule.code) ? .released : .grace), "\(rule.code) from the client")
            #expect(rule.byServer == (rule.code == .normal ? nil : rule.code == .replaced ? .kept : .grace), "\(rule.code) from the server")
        }
        #expect(ClosePolicy.disconnect(peerClosedWith: nil) == .lost)
        #expect(ClosePolicy.disconnect(serverClosedWith: .goingAway) == .lost, "a shutdown gives the grace period")
    }

    @Test func reasonsAreCutTo123BytesOnACharacterBoundary() {
        let payload = ClosePolicy.payload(code: 1008, reason: String(repeating: "é", count: 100), allocator: ByteBufferAllocator())
        #expect(payload.readableBytes == 2 + 122, "61 two-byte characters fit in 123 bytes")
        let short = ClosePolicy.payload(code: nil, reason: "ignored", allocator: ByteBufferAllocator())
        #expect(short.readableBytes == 0)
    }
}
