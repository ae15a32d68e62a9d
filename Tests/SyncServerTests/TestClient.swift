import DequeModule
import Foundation
import NIOCore
import NIOPosix
import NIOWebSocket
import PlaybackCore
import Synchronization

/// What a test client observed.
enum ClientEvent: Sendable, CustomStringConvertible {
    case message(ServerMessage, raw: String)
    case undecodable(String)
    case close(code: UInt16?, reason: String)
    case disconnected

    var description: String {
        switch self {
        case .message(_, let raw): "message \(raw)"
        case .undecodable(let raw): "undecodable \(raw)"
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

/// A WebSocket client for tests, on raw NIO: it writes frames byte by byte (so it can also
/// write unmasked, reserved or invalid ones) and records everything the server sends.
final class TestClient: Sendable {
    let channel: any Channel
    let inbox: Inbox
    let codec = MessageCodec()

    private init(channel: any Channel, inbox: Inbox) {
        self.channel = channel
        self.inbox = inbox
    }

    static let group = MultiThreadedEventLoopGroup.singleton

    /// Connects and upgrades; throws `HandshakeRefused` when the server answers with another status.
    static func connect(
        port: Int, token: String?, useQuery: Bool = false, origin: String? = nil, receiveBuffer: Int? = nil,
        autoRead: Bool = true, answerPings: Bool = true
    ) async throws -> TestClient {
        var path = "/v1/connect"
        var headers: [(String, String)] = [("Host", "127.0.0.1:\(port)"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]
        if let token {
            if useQuery { path += "?access_token=\(token)" } else { headers.append(("Authorization", "Bearer \(token)")) }
        }
        if let origin { headers.append(("Origin", origin)) }
        let request = "GET \(path) HTTP/1.1\r\n" + headers.map { "\($0.0): \($0.1)\r\n" }.joined() + "\r\n"
        let inbox = Inbox()
        let handshake = group.next().makePromise(of: Void.self)
        var bootstrap = ClientBootstrap(group: group)
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(HandshakeHandler(request: request, inbox: inbox, done: handshake, answerPings: answerPings))
                }
            }
        if let receiveBuffer {
            bootstrap = bootstrap.channelOption(ChannelOptions.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBuffer))
        }
        let channel = try await bootstrap.connect(host: "127.0.0.1", port: port).get()
        channel.eventLoop.scheduleTask(in: .seconds(5)) { handshake.fail(TestTimeout(waitingFor: "the handshake")) }
        try await handshake.futureResult.get()
        if !autoRead { try await channel.setOption(ChannelOptions.autoRead, value: false).get() }
        return TestClient(channel: channel, inbox: inbox)
    }

    // MARK: Sending

    func send(_ message: ClientMessage) async throws {
        try await sendText(String(decoding: codec.encode(message), as: UTF8.self))
    }

    func sendText(_ text: String) async throws {
        try await sendFrame(opcode: 0x1, payload: Array(text.utf8))
    }

    /// Writes one frame exactly as asked: masked or not, any opcode, any reserved bits.
    func sendFrame(opcode: UInt8, payload: [UInt8], fin: Bool = true, masked: Bool = true, rsv1: Bool = false) async throws {
        var buffer = channel.allocator.buffer(capacity: payload.count + 14)
        buffer.writeInteger(UInt8((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (opcode & 0x0F)))
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
        try await channel.writeAndFlush(buffer)
    }

    func sendClose(code: UInt16) async throws {
        var payload: [UInt8] = []
        withUnsafeBytes(of: code.bigEndian) { payload.append(contentsOf: $0) }
        try await sendFrame(opcode: 0x8, payload: payload)
    }

    /// Drops the TCP connection without a close frame (an abrupt loss).
    func drop() async {
        try? await channel.close()
    }

    // MARK: Receiving

    func next(timeout: Duration = .seconds(5)) async -> ClientEvent? {
        await inbox.next(timeout: timeout)
    }

    /// The next server message, skipping `devices` (and any other types in `skipping`).
    func nextMessage(skipping: Set<String> = ["devices"], timeout: Duration = .seconds(5)) async throws -> ServerMessage {
        while true {
            guard let event = await next(timeout: timeout) else { throw TestTimeout(waitingFor: "a message") }
            switch event {
            case .message(let message, _) where skipping.contains(message.type): continue
            case .message(let message, _): return message
            default: throw TestTimeout(waitingFor: "a message, got \(event)")
            }
        }
    }

    /// Waits for a message of one type, skipping others.
    func expect(_ type: String, timeout: Duration = .seconds(5)) async throws -> ServerMessage {
        while true {
            guard let event = await next(timeout: timeout) else { throw TestTimeout(waitingFor: type) }
            if case .message(let message, _) = event, message.type == type { return message }
            if case .close = event { throw TestTimeout(waitingFor: "\(type), got \(event)") }
            if case .disconnected = event { throw TestTimeout(waitingFor: "\(type), got \(event)") }
        }
    }

    /// Waits for the server's close frame (skipping messages) and returns its code.
    func expectClose(timeout: Duration = .seconds(5)) async -> UInt16? {
        while let event = await next(timeout: timeout) {
            switch event {
            case .close(let code, _): return code
            case .disconnected: return nil
            default: continue
            }
        }
        return nil
    }

    func hello(_ device: String, kind: DeviceKind = .smartphone, lastSeen: ClientMessage.Hello.LastSeen? = nil)
        async throws -> ServerMessage.Welcome
    {
        try await send(.hello(.init(device: .init(id: device, name: device.capitalized, kind: kind), lastSeen: lastSeen)))
        guard case .welcome(let welcome) = try await expect("welcome") else { throw TestTimeout(waitingFor: "welcome") }
        return welcome
    }

    /// Sends a command and waits for its ack or error; what arrives before it stays in the inbox.
    @discardableResult
    func command(_ id: String, _ command: Command, ifVersion: Int64? = nil) async throws -> ServerMessage {
        try await send(.command(.init(id: id, command: command, ifVersion: ifVersion)))
        var earlier: [ClientEvent] = []
        defer { inbox.putBack(earlier) }
        while true {
            guard let event = await next() else { throw TestTimeout(waitingFor: "the answer to \(id)") }
            switch event {
            case .message(.ack(let ack), _) where ack.id == id: return .ack(ack)
            case .message(.error(let error), _) where error.id == id: return .error(error)
            case .close, .disconnected: throw TestTimeout(waitingFor: "the answer to \(id), got \(event)")
            default: earlier.append(event)
            }
        }
    }

    /// Waits for a `state` event satisfying `predicate`.
    func state(where predicate: (PlayerState) -> Bool = { _ in true }, timeout: Duration = .seconds(5)) async throws -> ServerMessage.StateEvent {
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

/// Writes the upgrade request, reads the response head, then switches the pipeline to frames.
private final class HandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    let request: String
    let inbox: Inbox
    let done: EventLoopPromise<Void>
    let answerPings: Bool
    var received = ByteBuffer()
    var refusedStatus: Int?

    init(request: String, inbox: Inbox, done: EventLoopPromise<Void>, answerPings: Bool) {
        self.request = request
        self.inbox = inbox
        self.done = done
        self.answerPings = answerPings
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(NIOAny(ByteBuffer(string: request)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        received.writeBuffer(&bytes)
        guard refusedStatus == nil else { return }
        let view = String(decoding: received.readableBytesView, as: UTF8.self)
        guard let end = view.range(of: "\r\n\r\n") else { return }
        let head = String(view[..<end.lowerBound])
        let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
        guard status == 101 else {
            // The server answers a refused upgrade and closes; collect the body until then.
            refusedStatus = status
            received.moveReaderIndex(forwardBy: head.utf8.count + 4)
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: .milliseconds(500)) { loopBound.value.close(promise: nil) }
            return
        }
        received.moveReaderIndex(forwardBy: head.utf8.count + 4)
        let leftover = received
        do {
            try context.pipeline.syncOperations.addHandler(ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 24)))
            try context.pipeline.syncOperations.addHandler(FrameCollector(inbox: inbox, answerPings: answerPings))
        } catch {
            done.fail(error)
            return
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        if leftover.readableBytes > 0 { context.fireChannelRead(NIOAny(leftover)) }
        done.succeed()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let body = String(decoding: received.readableBytesView, as: UTF8.self)
        done.fail(HandshakeRefused(status: refusedStatus ?? 0, body: refusedStatus == nil ? "connection closed" : body))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        done.fail(error)
        context.close(promise: nil)
    }
}

/// Records server frames; answers pings like any client would.
private final class FrameCollector: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame

    let inbox: Inbox
    let answerPings: Bool
    let codec = MessageCodec()
    var text: ByteBuffer?

    init(inbox: Inbox, answerPings: Bool) {
        self.inbox = inbox
        self.answerPings = answerPings
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text, .continuation:
            var data = frame.data
            if text == nil { text = data } else { text?.writeBuffer(&data) }
            guard frame.fin, let message = text else { return }
            text = nil
            let raw = String(decoding: message.readableBytesView, as: UTF8.self)
            if let decoded = try? codec.decodeServerMessage(message.readableBytesView) {
                inbox.push(.message(decoded, raw: raw))
            } else {
                inbox.push(.undecodable(raw))
            }
        case .connectionClose:
            var data = frame.data
            let code = data.readInteger(as: UInt16.self)
            inbox.push(.close(code: code, reason: data.readString(length: data.readableBytes) ?? ""))
        case .ping where answerPings:
            var pong = context.channel.allocator.buffer(capacity: 6 + frame.data.readableBytes)
            pong.writeInteger(UInt8(0x8A))
            pong.writeInteger(UInt8(0x80 | UInt8(frame.data.readableBytes)))
            pong.writeBytes([0, 0, 0, 0])
            var payload = frame.data
            pong.writeBuffer(&payload)
            context.writeAndFlush(NIOAny(pong), promise: nil)
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        inbox.push(.disconnected)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
