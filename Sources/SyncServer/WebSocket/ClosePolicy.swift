import NIOCore
import NIOWebSocket
import PlaybackEngine

/// The close codes, in one place: what each means and what it does to the lease of the device
/// whose connection it ends (`protocol/PROTOCOL.md` §5 and §9; a test checks the table against
/// the protocol's).
enum ClosePolicy {
    /// What a connection's end does to its device's lease, when the device holds it.
    enum LeaseEffect: String, Sendable, CaseIterable {
        /// Released at once (`released`).
        case released
        /// Kept for the grace period; expired if the device does not come back (`expired`).
        case grace
        /// Kept: the device goes on holding it on another connection.
        case kept
    }

    struct Rule: Sendable {
        let code: CloseCode
        /// What the code does when the client closes with it.
        let byClient: LeaseEffect
        /// What it does when the server closes with it; nil for a code the server never sends.
        let byServer: LeaseEffect?
    }

    /// Every close code of the protocol, with what it does to the lease. A clean close by the
    /// client (1000, 1001) releases; a replacement (4001) keeps the lease with the new connection;
    /// everything else, the server's own closes included (1001 at shutdown too), is a loss and
    /// starts the grace period.
    static let rules: [Rule] = [
        Rule(code: .normal, byClient: .released, byServer: nil),
        Rule(code: .goingAway, byClient: .released, byServer: .grace),
        Rule(code: .protocolError, byClient: .grace, byServer: .grace),
        Rule(code: .unsupportedData, byClient: .grace, byServer: .grace),
        Rule(code: .invalidPayload, byClient: .grace, byServer: .grace),
        Rule(code: .policyViolation, byClient: .grace, byServer: .grace),
        Rule(code: .messageTooBig, byClient: .grace, byServer: .grace),
        Rule(code: .internalError, byClient: .grace, byServer: .grace),
        Rule(code: .tryAgainLater, byClient: .grace, byServer: .grace),
        Rule(code: .replaced, byClient: .grace, byServer: .kept),
        Rule(code: .tooSlow, byClient: .grace, byServer: .grace),
        Rule(code: .rateLimited, byClient: .grace, byServer: .grace),
    ]

    static func rule(_ code: UInt16?) -> Rule? { rules.first { $0.code.rawValue == code } }

    /// How a connection the client closed with `code` (nil: no code, or one of its own) ended.
    static func disconnect(peerClosedWith code: UInt16?) -> DisconnectKind {
        kind(rule(code)?.byClient ?? .grace)
    }

    /// How a connection the server closed with `code` ended.
    static func disconnect(serverClosedWith code: CloseCode) -> DisconnectKind {
        kind(rule(code.rawValue)?.byServer ?? .grace)
    }

    private static func kind(_ effect: LeaseEffect) -> DisconnectKind {
        switch effect {
        case .released: .released
        case .grace: .lost
        case .kept: .replaced
        }
    }

    /// A close reason is cut to this many bytes (a close frame's payload is at most 125 with the code).
    static let reasonLimit = 123

    /// A close frame's payload: the code and the reason, cut to `reasonLimit` bytes on a
    /// character boundary.
    static func payload(code: UInt16?, reason: String, allocator: ByteBufferAllocator) -> ByteBuffer {
        var payload = allocator.buffer(capacity: 2 + min(reason.utf8.count, reasonLimit))
        guard let code else { return payload }
        payload.writeInteger(code)
        var cut = Substring(reason)
        while cut.utf8.count > reasonLimit { cut = cut.dropLast() }
        payload.writeString(String(cut))
        return payload
    }
}

/// The close handshake of one connection, shared by the sessions and the diagnostics echo: the
/// server's close is sent once and the socket closed when the peer answers (or after a timeout);
/// a close from the peer is echoed and the socket closed once the echo is written.
struct CloseHandshake {
    enum Step: Equatable {
        /// Send a close frame with this code and reason, then wait for the peer's (with a timeout).
        case sendClose(code: UInt16, reason: String)
        /// Echo the peer's code, then close the socket.
        case echoThenClose(code: UInt16?)
        /// Close the socket now (the peer answered our close).
        case closeSocket
        /// Nothing to do: our close is already on its way.
        case none

        /// The close code this step sends (1005 for an echoed close that had none), if it sends one.
        var code: UInt16? {
            switch self {
            case .sendClose(let code, _): code
            case .echoThenClose(let code): code ?? 1005
            case .closeSocket, .none: nil
            }
        }
    }

    private(set) var closeSent = false

    /// The server closes with `code`.
    mutating func close(_ code: CloseCode, reason: String) -> Step {
        guard !closeSent else { return .none }
        closeSent = true
        return .sendClose(code: code.rawValue, reason: reason)
    }

    /// The peer sent a close frame with `code`.
    mutating func peerClosed(code: UInt16?) -> Step {
        if closeSent { return .closeSocket }
        closeSent = true
        return .echoThenClose(code: code)
    }

    /// NIO's protocol error handler already sent a close frame.
    mutating func closedByProtocolError() -> Bool {
        defer { closeSent = true }
        return !closeSent
    }
}

extension CloseHandshake.Step {
    /// Carries the step out on a WebSocket channel (its handler writes `WebSocketFrame`s); returns
    /// the timer that closes the socket if the peer does not answer our close.
    @discardableResult
    func perform(on context: ChannelHandlerContext, closeTimeout: TimeAmount) -> Scheduled<Void>? {
        let channel = NIOLoopBound(context, eventLoop: context.eventLoop)
        switch self {
        case .sendClose(let code, let reason):
            let payload = ClosePolicy.payload(code: code, reason: reason, allocator: context.channel.allocator)
            context.writeAndFlush(NIOAny(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)), promise: nil)
            return context.eventLoop.scheduleTask(in: closeTimeout) { channel.value.close(promise: nil) }
        case .echoThenClose(let code):
            let payload = ClosePolicy.payload(code: code, reason: "", allocator: context.channel.allocator)
            context.writeAndFlush(NIOAny(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)))
                .whenComplete { _ in channel.value.close(promise: nil) }
        case .closeSocket:
            context.close(promise: nil)
        case .none:
            break
        }
        return nil
    }
}
