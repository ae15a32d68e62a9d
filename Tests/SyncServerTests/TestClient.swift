import DequeModule
import DeviceSimKit
import Foundation
import NIOCore
import NIOWebSocket
import PlaybackCore
import Synchronization

/// What a test client observed.
enum ClientEvent: Sendable, CustomStringConvertible {
    case message(ServerMessage)
    case undecodable(String)
    case compressedFrame(ByteBuffer)
    case close(code: UInt16?, reason: String)
    case disconnected

    var description: String {
        switch self {
        case .message(let message): "message \(message.type)"
        case .undecodable(let raw): "undecodable \(raw)"
        case .compressedFrame(let bytes): "compressed \(bytes.readableBytes) bytes"
        case .close(let code, let reason): "close \(code.map(String.init) ?? "-") \(reason)"
        case .disconnected: "disconnected"
        }
    }
}

struct HandshakeRefused: Error, CustomStringConvertible {
    var status: Int
    var body: String
    var description: String { "HTTP \(status): \(body)" }
}

struct TestTimeout: Error, CustomStringConvertible {
    var waitingFor: String
    var description: String { "timed out waiting for \(waitingFor)" }
}

/// A WebSocket client for tests: `DeviceSimKit`'s connection, plus raw frame writes (unmasked,
/// reserved or invalid frames) and an inbox of everything the server sent.
final class TestClient: Sendable {
    let connection: DeviceConnection
    let inbox: Inbox
    let codec = MessageCodec()

    /// How long a test waits for what it expects before failing. Generous: the suites run in
    /// parallel on two cores, and only a failing test waits this long.
    static let patience: Duration = .seconds(10)

    var channel: any Channel { connection.channel }

    private init(connection: DeviceConnection, inbox: Inbox) {
        self.connection = connection
        self.inbox = inbox
    }

    /// Connects and upgrades; throws `HandshakeRefused` when the server answers with another status.
    static func connect(
        port: Int, token: String?, useQuery: Bool = false, origin: String? = nil, receiveBuffer: Int? = nil,
        autoRead: Bool = true, answerPings: Bool = true, path: String = "/v1/connect",
        options base: DeviceConnection.Options = DeviceConnection.Options()
    ) async throws -> TestClient {
        var options = base
        options.path = path
        options.tokenInQuery = useQuery
        options.origin = origin
        options.receiveBufferBytes = receiveBuffer
        options.answerPings = answerPings
        options.timeout = TimeAmount(patience)
        let inbox = Inbox()
        let connection: DeviceConnection
        do {
            connection = try await DeviceConnection.connect(to: .init(host: "127.0.0.1", port: port), token: token, options: options) { event in
                switch event {
                case .message(let message, _): inbox.push(.message(message))
                case .undecodable(let text): inbox.push(.undecodable(text))
                case .compressed(let bytes): inbox.push(.compressedFrame(bytes))
                case .pinged, .summary: break
                case .closed(let code, let reason):
                    if let code { inbox.push(.close(code: code, reason: reason)) }
                    inbox.push(.disconnected)
                }
            }
        } catch ConnectError.refused(let status, let body) {
            throw HandshakeRefused(status: status, body: body)
        }
        if !autoRead { try await connection.channel.setOption(ChannelOptions.autoRead, value: false).get() }
        return TestClient(connection: connection, inbox: inbox)
    }

    // MARK: Sending

    func send(_ message: ClientMessage) async throws {
        try await sendText(String(decoding: codec.encode(message), as: UTF8.self))
    }

    func sendText(_ text: String) async throws {
        try await sendFrame(opcode: 0x1, payload: Array(text.utf8))
    }

    /// Writes one frame exactly as asked: masked or not, any opcode, any reserved bits.
    func sendFrame(
        opcode: UInt8, payload: [UInt8], fin: Bool = true, masked: Bool = true, rsv1: Bool = false, rsv2: Bool = false
    ) async throws {
        var buffer = ByteBuffer()
        Self.writeFrame(into: &buffer, opcode: opcode, payload: payload, fin: fin, masked: masked, rsv1: rsv1, rsv2: rsv2)
        try await connection.writeRaw(buffer)
    }

    /// Writes `count` copies of one frame in one write.
    func sendFrames(opcode: UInt8, payload: [UInt8], count: Int) async throws {
        var buffer = ByteBuffer()
        for _ in 0..<count { Self.writeFrame(into: &buffer, opcode: opcode, payload: payload) }
        try await connection.writeRaw(buffer)
    }

    /// Writes many text messages in one write: they arrive together, however slow this client is.
    func sendTexts(_ texts: [String]) async throws {
        var buffer = ByteBuffer()
        for text in texts { Self.writeFrame(into: &buffer, opcode: 0x1, payload: Array(text.utf8)) }
        try await connection.writeRaw(buffer)
    }

    private static func writeFrame(
        into buffer: inout ByteBuffer, opcode: UInt8, payload: [UInt8], fin: Bool = true, masked: Bool = true,
        rsv1: Bool = false, rsv2: Bool = false
    ) {
        buffer.writeInteger(UInt8((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (rsv2 ? 0x20 : 0) | (opcode & 0x0F)))
        let maskBit: UInt8 = masked ? 0x80 : 0
        switch payload.count {
        case ..<126: buffer.writeInteger(maskBit | UInt8(payload.count))
        case ..<65_536:
            buffer.writeInteger(maskBit | 126)
            buffer.writeInteger(UInt16(payload.count))
        default:
            buffer.writeInteger(maskBit | 127)
            buffer.writeInteger(UInt64(payload.count))
        }
        if masked {
            let key: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]
            buffer.writeBytes(key)
            buffer.writeBytes(payload.enumerated().map { $0.element ^ key[$0.offset % 4] })
        } else {
            buffer.writeBytes(payload)
        }
    }

    func sendClose(code: UInt16) async throws {
        var payload: [UInt8] = []
        withUnsafeBytes(of: code.bigEndian) { payload.append(contentsOf: $0) }
        try await sendFrame(opcode: 0x8, payload: payload)
    }

    /// Drops the TCP connection without a close frame (an abrupt loss).
    func drop() async {
        await connection.drop()
    }

    // MARK: Receiving

    func next(timeout: Duration = TestClient.patience) async -> ClientEvent? {
        await inbox.next(timeout: timeout)
    }

    /// The next server message, skipping `devices` (and any other types in `skipping`).
    func nextMessage(skipping: Set<String> = ["devices"], timeout: Duration = TestClient.patience) async throws -> ServerMessage {
        while true {
            guard let event = await next(timeout: timeout) else { throw TestTimeout(waitingFor: "a message") }
            switch event {
            case .message(let message) where skipping.contains(message.type): continue
            case .message(let message): return message
            default: throw TestTimeout(waitingFor: "a message, got \(event)")
            }
        }
    }

    /// Waits for a message of one type, skipping others.
    func expect(_ type: String, timeout: Duration = TestClient.patience) async throws -> ServerMessage {
        while true {
            guard let event = await next(timeout: timeout) else { throw TestTimeout(waitingFor: type) }
            if case .message(let message) = event, message.type == type { return message }
            if case .close = event { throw TestTimeout(waitingFor: "\(type), got \(event)") }
            if case .disconnected = event { throw TestTimeout(waitingFor: "\(type), got \(event)") }
        }
    }

    /// Starts reading again (a client made with `autoRead: false`), reads everything the server
    /// sent, and returns the code of its close frame.
    func closeAfterReadingEverything() async -> UInt16? {
        try? await channel.setOption(ChannelOptions.autoRead, value: true).get()
        channel.read()
        return await expectClose()
    }

    /// Waits for the server's close frame (skipping messages) and returns its code.
    func expectClose(timeout: Duration = TestClient.patience) async -> UInt16? {
        while let event = await next(timeout: timeout) {
            switch event {
            case .close(let code, _): return code
            case .disconnected: return nil
            default: continue
            }
        }
        return nil
    }

    func hello(
        _ device: String, kind: DeviceKind = .smartphone, lastSeen: ClientMessage.Hello.LastSeen? = nil, capabilities: [String]? = nil
    ) async throws -> ServerMessage.Welcome {
        try await send(.hello(.init(device: .init(id: device, name: device.capitalized, kind: kind), lastSeen: lastSeen, capabilities: capabilities)))
        guard case .welcome(let welcome) = try await expect("welcome") else { throw TestTimeout(waitingFor: "welcome") }
        return welcome
    }

    /// Sends a command and waits for its ack or error; what arrives before it stays in the inbox.
    @discardableResult
    func command(_ id: String, _ command: Command, ifVersion: Int64? = nil) async throws -> ServerMessage {
        try await send(.command(.init(id: id, command: command, ifVersion: ifVersion)))
        return try await answer(to: id)
    }

    /// Sends a command that must be acked: anything else fails the test, naming what came instead.
    @discardableResult
    func acked(_ id: String, _ command: Command, ifVersion: Int64? = nil) async throws -> ServerMessage.Ack {
        let answer = try await self.command(id, command, ifVersion: ifVersion)
        guard case .ack(let ack) = answer else { throw TestFailure("\(id) (\(command)) was not acked: \(answer)") }
        return ack
    }

    /// Sends a command that must be acked once the server stops refusing it with `unavailable`
    /// (a playback restored after a storage loss settles first): the same id again after each
    /// refusal's `retry_after_ms`, for at most `seconds`. Returns the ack and the refusals seen.
    func ackedOnceAvailable(_ id: String, _ command: Command, seconds: Double = 10) async throws
        -> (ack: ServerMessage.Ack, refusals: [ServerMessage.ErrorReply])
    {
        var refusals: [ServerMessage.ErrorReply] = []
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1_000))
        while true {
            let answer = try await self.command(id, command)
            switch answer {
            case .ack(let ack): return (ack, refusals)
            case .error(let error) where error.code == .unavailable && ContinuousClock.now < deadline:
                refusals.append(error)
                try await Task.sleep(for: .milliseconds(max(50, error.retryAfterMs ?? 100)))
            default: throw TestFailure("\(id) (\(command)) was not acked: \(answer) after \(refusals.count) refusals")
            }
        }
    }

    /// Sends a command that must be refused: an ack fails the test.
    func refused(_ id: String, _ command: Command, ifVersion: Int64? = nil) async throws -> ServerMessage.ErrorReply {
        let answer = try await self.command(id, command, ifVersion: ifVersion)
        guard case .error(let error) = answer else { throw TestFailure("\(id) (\(command)) was not refused: \(answer)") }
        return error
    }

    /// Asks for recently played tracks and waits for the answer.
    func history(_ id: String, limit: Int = 20) async throws -> ServerMessage {
        try await send(.history(id: id, limit: limit))
        return try await answer(to: id)
    }

    /// Waits for the ack, error or history answering request `id`; what arrives before it stays in the inbox.
    func answer(to id: String) async throws -> ServerMessage {
        var earlier: [ClientEvent] = []
        defer { inbox.putBack(earlier) }
        while true {
            guard let event = await next() else { throw TestTimeout(waitingFor: "the answer to \(id)") }
            switch event {
            case .message(.ack(let ack)) where ack.id == id: return .ack(ack)
            case .message(.error(let error)) where error.id == id: return .error(error)
            case .message(.history(let history)) where history.id == id: return .history(history)
            case .close, .disconnected: throw TestTimeout(waitingFor: "the answer to \(id), got \(event)")
            default: earlier.append(event)
            }
        }
    }

    /// Waits for a `state` event satisfying `predicate`.
    func state(where predicate: (PlayerState) -> Bool = { _ in true }, timeout: Duration = TestClient.patience) async throws -> ServerMessage.StateEvent {
        while true {
            guard case .state(let event) = try await expect("state", timeout: timeout) else { continue }
            if predicate(event.state) { return event }
        }
    }
}

/// Events from the channel, waited for with a timeout.
final class Inbox: Sendable {
    private struct State {
        var events: Deque<ClientEvent> = []
        var waiter: (id: Int, continuation: CheckedContinuation<ClientEvent?, Never>)?
        var nextWaiter = 0
    }

    private let state = Mutex(State())

    func push(_ event: ClientEvent) {
        let waiter = state.withLock { state -> CheckedContinuation<ClientEvent?, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter.continuation
            }
            state.events.append(event)
            return nil
        }
        waiter?.resume(returning: event)
    }

    /// Returns events to the front of the inbox, in their order.
    func putBack(_ events: [ClientEvent]) {
        guard !events.isEmpty else { return }
        state.withLock { state in state.events.insert(contentsOf: events, at: 0) }
    }

    func next(timeout: Duration) async -> ClientEvent? {
        await withCheckedContinuation { continuation in
            let (ready, id) = state.withLock { state -> (ClientEvent?, Int) in
                if let event = state.events.popFirst() { return (event, -1) }
                state.nextWaiter += 1
                state.waiter = (state.nextWaiter, continuation)
                return (nil, state.nextWaiter)
            }
            if let ready {
                continuation.resume(returning: ready)
                return
            }
            Task {
                try? await Task.sleep(for: timeout)
                let expired = self.state.withLock { state -> CheckedContinuation<ClientEvent?, Never>? in
                    guard let waiter = state.waiter, waiter.id == id else { return nil }
                    state.waiter = nil
                    return waiter.continuation
                }
                expired?.resume(returning: nil)
            }
        }
    }
}

