import DequeModule
import NIOCore
import NIOWebSocket
import PlaybackCore
import PlaybackEngine

/// One session's rules, without IO: the hello deadline, liveness and heartbeat, the rate limit and
/// its strikes, the malformed-message count, token expiry and refresh, the queue to the engine
/// with its backpressure, the send-buffer policy and the close handshake. Each event (a frame, a
/// timer, the engine's answer) goes in with the time; what to do comes out as `Action`s, which
/// `SessionHandler` carries out. Table-tested in `SessionStateMachineTests`.
struct SessionStateMachine {
    enum Phase: Equatable {
        case awaitingHello
        case connecting
        case active
        case closed
    }

    struct Settings: Sendable {
        var helloTimeoutMs: Int64
        var heartbeatMs: Int64
        var messagesPerSecond: Int
        var messageBurst: Int
        var rateLimitStrikes: Int
        var malformedLimit: Int
        var maxPendingMessages: Int
        var maxMessageBytes: Int

        init(_ configuration: ServerConfiguration) {
            helloTimeoutMs = configuration.helloTimeoutMs
            heartbeatMs = configuration.heartbeatMs
            messagesPerSecond = configuration.messagesPerSecond
            messageBurst = configuration.messageBurst
            rateLimitStrikes = configuration.rateLimitStrikes
            malformedLimit = configuration.malformedLimit
            maxPendingMessages = configuration.maxPendingMessages
            maxMessageBytes = configuration.maxMessageBytes
        }
    }

    enum Action: Equatable {
        /// Arm the hello deadline / the token's expiry (ms from now); cancel the hello deadline.
        case armHelloTimer(ms: Int64)
        case armExpiryTimer(ms: Int64)
        case cancelHelloTimer
        /// Send a message, a pong, a ping.
        case send(ServerMessage)
        case pong(ByteBuffer)
        case ping
        /// The close handshake: see `CloseHandshake.Step` (a sent close arms the close timer).
        case close(CloseHandshake.Step)
        /// Drop the socket at once (silent client).
        case drop
        /// Hand a message to the engine; its outcome comes back through `finished`.
        case submit(ClientMessage)
        /// Read again (the queue to the engine drained).
        case read
        /// Tell the engine the device's connection ended.
        case disconnect(device: String, DisconnectKind)
        /// Count a refused message (rate limit) or a malformed one (its error code).
        case countRateLimited
        case countMalformed(PlaybackError.Code)
        /// The pong to our last ping came back after this long (the connection's round trip).
        case roundTrip(ns: UInt64)
    }

    let settings: Settings
    private(set) var phase = Phase.awaitingHello
    private(set) var device: String?
    private(set) var disconnectKind = DisconnectKind.lost
    private(set) var handshake = CloseHandshake()
    private var expiresAtMs: Int64
    private var assembler: FrameAssembler
    private var bucket: TokenBucket
    private let codec = MessageCodec()
    private var malformedInARow = 0
    private var rateStrikes = 0
    private var rateStrikeWindowNs: UInt64 = 0
    private var lastHeardNs: UInt64
    /// When our last ping went out, until its pong comes back.
    private var pingSentNs: UInt64?
    private var pending = Deque<ClientMessage>()
    private var working = false
    private var readsHeld = false
    private var readPending = false

    init(settings: Settings, expiresAtMs: Int64, inflates: Bool, nowNs: UInt64) {
        self.settings = settings
        self.expiresAtMs = expiresAtMs
        assembler = FrameAssembler(maxMessageBytes: settings.maxMessageBytes, inflates: inflates)
        bucket = TokenBucket(rate: settings.messagesPerSecond, burst: settings.messageBurst, nowNs: nowNs)
        lastHeardNs = nowNs
    }

    /// Whether messages from the engine still go out.
    var sends: Bool { !handshake.closeSent && phase != .closed }

    // MARK: Events

    /// The upgrade is done: hello must come in time, and the token expires when it does.
    func opened(nowMs: Int64) -> [Action] {
        [.armHelloTimer(ms: settings.helloTimeoutMs), .armExpiryTimer(ms: max(0, expiresAtMs - nowMs))]
    }

    mutating func frame(_ frame: WebSocketFrame, nowNs: UInt64, nowMs: Int64) -> [Action] {
        lastHeardNs = nowNs
        guard phase != .closed else { return [] }
        switch assembler.receive(frame) {
        case .none:
            return []
        case .pong:
            // Control frames count toward the rate limit too: a pong flood costs like any other.
            var actions = admit(nowNs: nowNs).actions
            if let sent = pingSentNs, nowNs >= sent {
                pingSentNs = nil
                actions.append(.roundTrip(ns: nowNs - sent))
            }
            return actions
        case .ping(let payload):
            // Answered like any message: within the rate limit and the send buffer (a client that
            // pings and never reads ends with 4008, one that floods with 4029).
            guard !handshake.closeSent else { return [] }
            let (retryAfter, actions) = admit(nowNs: nowNs)
            return retryAfter == nil ? [.pong(payload)] : actions
        case .text(let text):
            guard !handshake.closeSent else { return [] }
            return receive(text, nowNs: nowNs, nowMs: nowMs)
        case .binary:
            return close(.unsupportedData, "binary messages are not supported; send JSON text")
        case .close(let code, _):
            if !handshake.closeSent { disconnectKind = ClosePolicy.disconnect(peerClosedWith: code) }
            return [.close(handshake.peerClosed(code: code))]
        case .fail(let code, let reason):
            return close(code, reason)
        }
    }

    /// The loop asked for more input: passed on unless the queue to the engine is full.
    mutating func readRequested() -> [Action] {
        guard readsHeld else { return [.read] }
        readPending = true
        return []
    }

    /// The engine answered `message`.
    mutating func finished(_ outcome: SessionServices.Outcome, for message: ClientMessage, nowMs: Int64) -> [Action] {
        working = false
        var actions: [Action] = []
        switch outcome {
        case .connected(let device):
            self.device = device
            if phase == .closed {
                // The connection went away while hello was being handled.
                actions.append(.disconnect(device: device, disconnectKind))
            } else {
                phase = .active
            }
        case .reply(let reply, let malformed):
            if let reply { actions.append(.send(reply)) }
            if malformed {
                actions += countMalformed()
            } else if case .command = message {
                malformedInARow = 0
            }
        case .reauthenticated(let expiresAtMs, let reply):
            self.expiresAtMs = expiresAtMs
            actions.append(.armExpiryTimer(ms: max(0, expiresAtMs - nowMs)))
            if let reply { actions.append(.send(reply)) }
        case .close(let code, let reason):
            actions += close(code, reason)
        }
        if readsHeld, pending.count < settings.maxPendingMessages / 2 {
            readsHeld = false
            if readPending {
                readPending = false
                actions.append(.read)
            }
        }
        return actions + pump()
    }

    /// The heartbeat's tick: a client silent for two intervals is dropped, the others pinged (the
    /// pong's delay is the connection's round trip).
    mutating func heartbeat(nowNs: UInt64) -> [Action] {
        guard phase != .closed else { return [] }
        if nowNs > lastHeardNs, nowNs - lastHeardNs > UInt64(2 * settings.heartbeatMs) * 1_000_000 { return [.drop] }
        guard !handshake.closeSent else { return [] }
        pingSentNs = nowNs
        return [.ping]
    }

    mutating func helloTimedOut() -> [Action] {
        close(.policyViolation, "no hello within \(settings.helloTimeoutMs) ms")
    }

    mutating func tokenExpired() -> [Action] {
        close(.policyViolation, "the access token expired")
    }

    /// The send buffer is full: the client does not read fast enough.
    mutating func sendBufferFull() -> [Action] {
        close(.tooSlow, "too slow to read: send buffer limit reached")
    }

    /// NIO's protocol error handler sent a close frame of its own; true when it is the first.
    mutating func protocolError() -> Bool {
        handshake.closedByProtocolError()
    }

    /// The server closes the session (the engine, a shutdown, a limit).
    mutating func close(_ code: CloseCode, _ reason: String) -> [Action] {
        guard phase != .closed else { return [] }
        let step = handshake.close(code, reason: reason)
        guard step != .none else { return [] }
        pending.removeAll()
        if code == .replaced { disconnectKind = ClosePolicy.disconnect(serverClosedWith: code) }
        return [.close(step)]
    }

    /// The socket is gone.
    mutating func closed() -> [Action] {
        let wasActive = phase == .active
        phase = .closed
        pending.removeAll()
        guard wasActive, let device else { return [] }
        return [.disconnect(device: device, disconnectKind)]
    }

    // MARK: Inside

    /// Takes a token for one incoming message or control frame: nil when admitted, else how long
    /// to wait. Sustained abuse (more than `rateLimitStrikes` refused within a second) closes with 4029.
    private mutating func admit(nowNs: UInt64) -> (retryAfterMs: Int64?, actions: [Action]) {
        let decision = bucket.take(nowNs: nowNs)
        if decision.allowed { return (nil, []) }
        if nowNs - rateStrikeWindowNs > 1_000_000_000 {
            rateStrikeWindowNs = nowNs
            rateStrikes = 0
        }
        rateStrikes += 1
        var actions: [Action] = [.countRateLimited]
        if rateStrikes > settings.rateLimitStrikes { actions += close(.rateLimited, "message rate limit exceeded") }
        return (decision.retryAfterMs, actions)
    }

    private mutating func receive(_ text: ByteBuffer, nowNs: UInt64, nowMs: Int64) -> [Action] {
        let (retryAfterMs, refused) = admit(nowNs: nowNs)
        if let retryAfterMs {
            guard !handshake.closeSent else { return refused }
            let error = PlaybackError(
                .rateLimited, "more than \(settings.messagesPerSecond) messages per second", retryAfterMs: retryAfterMs)
            return refused + [.send(.error(.init(id: codec.requestID(in: text.readableBytesView), error: error)))]
        }
        let decoded = codec.decodeClientMessage(text.readableBytesView)
        switch phase {
        case .awaitingHello:
            guard case .success(.hello(let hello)) = decoded else { return close(.policyViolation, "the first message must be a valid hello") }
            phase = .connecting
            return [.cancelHelloTimer] + enqueue(.hello(hello))
        case .connecting, .active:
            switch decoded {
            case .failure(let rejection):
                return [.countMalformed(rejection.error.code), .send(.error(.init(id: rejection.requestID, error: rejection.error)))]
                    + countMalformed()
            case .success(.hello):
                return [.send(.error(.init(id: nil, error: .badRequest("hello was already sent"))))] + countMalformed()
            case .success(.clock(let t0)):
                malformedInARow = 0
                return [.send(.clock(t0: t0, serverTime: nowMs))]
            case .success(let message):
                // A command's arguments are judged by the engine: its answer resets or counts.
                if case .command = message {} else { malformedInARow = 0 }
                return enqueue(message)
            }
        case .closed:
            return []
        }
    }

    private mutating func countMalformed() -> [Action] {
        malformedInARow += 1
        guard malformedInARow >= settings.malformedLimit else { return [] }
        return close(.policyViolation, "too many malformed messages in a row")
    }

    private mutating func enqueue(_ message: ClientMessage) -> [Action] {
        pending.append(message)
        if pending.count >= settings.maxPendingMessages { readsHeld = true }
        return pump()
    }

    /// One message at a time to the engine, in order.
    private mutating func pump() -> [Action] {
        guard !working, phase != .closed, let message = pending.popFirst() else { return [] }
        working = true
        return [.submit(message)]
    }
}
