import DequeModule
import Logging
import NIOCore
import NIOWebSocket
import PlaybackEngine

/// One device's WebSocket connection after the upgrade, as a plain NIO handler (no task per
/// connection): it assembles frames, enforces the limits, answers `clock` and pings, and hands
/// every other message, one at a time and in order, to the engine. Messages from the engine
/// arrive through its `SessionSink`.
final class SessionHandler: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private enum Phase {
        case awaitingHello
        case connecting
        case active
        case closed
    }

    let sessionID: String
    private let services: SessionServices
    private let user: UserIdentity
    private var configuration: ServerConfiguration { services.configuration }
    private var logger: Logger
    private let codec = MessageCodec()
    private var expiresAtMs: Int64
    private var phase = Phase.awaitingHello
    private var assembler: FrameAssembler
    private var bucket: TokenBucket
    private var malformedInARow = 0
    private var rateStrikes = 0
    private var rateStrikeWindowNs: UInt64 = 0
    private var pending = Deque<ClientMessage>()
    private var working = false
    private var readsHeld = false
    private var readPending = false
    private var lastHeard = NIODeadline.now()
    private var closeSent = false
    private var disconnectKind = DisconnectKind.lost
    private var device: String?
    private var context: ChannelHandlerContext?
    private var sink: SessionSink?
    private var helloTimer: Scheduled<Void>?
    private var expiryTimer: Scheduled<Void>?
    private var closeTimer: Scheduled<Void>?
    /// The event loop's heartbeat, which ticks this session once per interval.
    private var heartbeat: HeartbeatSweep?
    /// A flush is queued on the event loop: messages written until it runs go out in one syscall.
    private var flushQueued = false

    /// permessage-deflate parameters, when negotiated.
    private let deflate: PerMessageDeflate?

    init(services: SessionServices, token: AccessToken, sessionID: String, deflate: PerMessageDeflate? = nil) {
        self.services = services
        self.user = token.identity
        self.expiresAtMs = token.expiresAtMs
        self.sessionID = sessionID
        self.deflate = deflate
        self.assembler = FrameAssembler(maxMessageBytes: services.configuration.maxMessageBytes, inflates: deflate != nil)
        self.bucket = TokenBucket(
            rate: services.configuration.messagesPerSecond, burst: services.configuration.messageBurst,
            nowNs: NIODeadline.now().uptimeNanoseconds)
        var logger = services.logger
        logger[metadataKey: "session.id"] = .string(sessionID)
        logger[metadataKey: "user.id"] = .string(token.identity.userID)
        self.logger = logger
    }

    // MARK: Lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        sink = SessionSink(sessionID: sessionID, handler: loopBound, eventLoop: context.eventLoop)
        let high = max(configuration.sendBufferBytes, 1_024)
        context.channel.setOption(ChannelOptions.writeBufferWaterMark, value: .init(low: high / 2, high: high))
            .whenFailure { _ in }
        helloTimer = context.eventLoop.scheduleTask(in: .milliseconds(configuration.helloTimeoutMs)) {
            loopBound.value.close(.policyViolation, "no hello within \(loopBound.value.configuration.helloTimeoutMs) ms")
        }
        let sweep = services.heartbeats.sweep(on: context.eventLoop)
        sweep.add(self)
        heartbeat = sweep
        scheduleExpiry()
        ServerMetrics.connections.increment()
        ServerMetrics.upgrades.increment()
        logger.debug("session opened")
    }

    func channelInactive(context: ChannelHandlerContext) {
        let wasConnected = phase == .active
        phase = .closed
        pending.removeAll()
        for timer in [helloTimer, expiryTimer, closeTimer] { timer?.cancel() }
        heartbeat?.remove(self)
        heartbeat = nil
        ServerMetrics.connections.decrement()
        if !closeSent { ServerMetrics.closed(1006) }
        if wasConnected { notifyDisconnect() }
        logger.debug("session closed", metadata: ["session.disconnect": .string(disconnectKind.rawValue)])
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        heartbeat?.remove(self)
        heartbeat = nil
        self.context = nil
        sink = nil  // breaks the handler ↔ sink cycle once the engine has let go of the sink
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            close(.goingAway, "server going away")
        } else if let event = event as? ChannelEvent, event == .inputClosed {
            // The server allows half-closure (for HTTP); for a WebSocket, the peer's FIN ends it.
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let error = error as? NIOWebSocketError {
            // WebSocketProtocolErrorHandler already sent the close frame and closes the channel.
            if !closeSent {
                closeSent = true
                ServerMetrics.closed(error == .invalidFrameLength ? CloseCode.messageTooBig.rawValue : CloseCode.protocolError.rawValue)
            }
            logger.debug("websocket protocol error", metadata: ["error": .string("\(error)")])
        } else {
            logger.debug("connection error", metadata: ["error": .string("\(error)")])
            context.close(promise: nil)
        }
    }

    /// Holds reads while too many messages wait for the engine (backpressure on the client).
    func read(context: ChannelHandlerContext) {
        if readsHeld {
            readPending = true
        } else {
            context.read()
        }
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        lastHeard = .now()
        guard phase != .closed else { return }
        switch assembler.receive(frame) {
        case .none:
            return
        case .pong:
            // Control frames count toward the rate limit too: a pong flood costs like any other.
            _ = admit()
        case .ping(let payload):
            // A ping is answered like any message is: within the rate limit and the send buffer
            // (a client that pings and never reads ends with 4008, one that floods with 4029).
            guard !closeSent, admit() == nil else { return }
            writeFrame(WebSocketFrame(fin: true, opcode: .pong, data: payload))
        case .text(let text):
            guard !closeSent else { return }
            receive(text)
        case .binary:
            close(.unsupportedData, "binary messages are not supported; send JSON text")
        case .close(let code, _):
            peerClosed(code: code, context: context)
        case .fail(let code, let reason):
            close(code, reason)
        }
    }

    /// Takes a token for one incoming message or control frame: nil when admitted, else how long
    /// to wait. Sustained abuse (more than `rateLimitStrikes` refused within one second) closes
    /// the connection with 4029.
    private func admit() -> Int64? {
        let nowNs = NIODeadline.now().uptimeNanoseconds
        let decision = bucket.take(nowNs: nowNs)
        if decision.allowed { return nil }
        if nowNs - rateStrikeWindowNs > 1_000_000_000 {
            rateStrikeWindowNs = nowNs
            rateStrikes = 0
        }
        rateStrikes += 1
        ServerMetrics.message("any", result: "rate_limited")
        if rateStrikes > configuration.rateLimitStrikes { close(.rateLimited, "message rate limit exceeded") }
        return decision.retryAfterMs
    }

    private func receive(_ text: ByteBuffer) {
        if let retryAfterMs = admit() {
            guard !closeSent else { return }
            let error = PlaybackError(
                .rateLimited, "more than \(configuration.messagesPerSecond) messages per second", retryAfterMs: retryAfterMs)
            write(.error(.init(id: codec.requestID(in: text.readableBytesView), error: error)))
            return
        }
        let decoded = codec.decodeClientMessage(text.readableBytesView)
        switch phase {
        case .awaitingHello:
            guard case .success(.hello(let hello)) = decoded else {
                close(.policyViolation, "the first message must be a valid hello")
                return
            }
            helloTimer?.cancel()
            phase = .connecting
            enqueue(.hello(hello))
        case .connecting, .active:
            switch decoded {
            case .failure(let rejection):
                ServerMetrics.message("malformed", result: rejection.error.code.rawValue)
                write(.error(.init(id: rejection.requestID, error: rejection.error)))
                countMalformed()
            case .success(.hello):
                write(.error(.init(id: nil, error: .badRequest("hello was already sent"))))
                countMalformed()
            case .success(.clock(let t0)):
                malformedInARow = 0
                write(.clock(t0: t0, serverTime: ServerClock.nowMs()))
            case .success(let message):
                if case .command = message {} else { malformedInARow = 0 }
                enqueue(message)
            }
        case .closed:
            return
        }
    }

    private func countMalformed() {
        malformedInARow += 1
        if malformedInARow >= configuration.malformedLimit {
            close(.policyViolation, "too many malformed messages in a row")
        }
    }

    private func peerClosed(code: UInt16?, context: ChannelHandlerContext) {
        if closeSent {
            context.close(promise: nil)
            return
        }
        if code == CloseCode.normal.rawValue || code == CloseCode.goingAway.rawValue {
            disconnectKind = .released
        }
        closeSent = true
        ServerMetrics.closed(code ?? 1005)
        var payload = context.channel.allocator.buffer(capacity: 2)
        if let code { payload.writeInteger(code) }
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)))
            .whenComplete { _ in loopBound.value.close(promise: nil) }
    }

    // MARK: The engine queue

    private func enqueue(_ message: ClientMessage) {
        pending.append(message)
        if pending.count >= configuration.maxPendingMessages { readsHeld = true }
        pump()
    }

    private func pump() {
        guard !working, let context, let sink, let message = pending.popFirst() else { return }
        working = true
        let session = SessionServices.Session(user: user, device: device, sink: sink)
        let services = self.services
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        services.handle(message, session: session) { outcome in
            // Back on the connection's loop; never inline, so that an answer given at once does
            // not start the next message inside this one.
            eventLoop.execute { loopBound.value.finished(outcome, for: message) }
        }
    }

    private func finished(_ outcome: SessionServices.Outcome, for message: ClientMessage) {
        working = false
        ServerMetrics.message(message.type, result: "handled")
        switch outcome {
        case .connected(let device):
            self.device = device
            logger[metadataKey: "device.id"] = .string(device)
            if phase == .closed {
                notifyDisconnect()  // the connection went away while hello was being handled
            } else {
                phase = .active
            }
        case .reply(let reply, let malformed):
            if let reply { write(reply) }
            if malformed {
                countMalformed()
            } else if case .command = message {
                malformedInARow = 0
            }
        case .reauthenticated(let expiresAtMs, let reply):
            self.expiresAtMs = expiresAtMs
            scheduleExpiry()
            if let reply { write(reply) }
        case .close(let code, let reason):
            close(code, reason)
        }
        if readsHeld, pending.count < configuration.maxPendingMessages / 2 {
            readsHeld = false
            if readPending, let context {
                readPending = false
                context.read()
            }
        }
        pump()
    }

    private func notifyDisconnect() {
        guard let device else { return }
        ServerMetrics.sessions.decrement()
        let services = self.services
        let (user, sessionID, kind) = (self.user, self.sessionID, disconnectKind)
        let engine = services.engine
        engine.perform { await engine.disconnect(user: user, device: device, sessionID: sessionID, kind: kind) }
    }

    // MARK: Outbound

    private func write(_ message: ServerMessage) {
        deliver(EncodedMessage(message))
    }

    /// Sends a message unless the connection is closing; a client that stops reading is
    /// closed with 4008 once its send buffer is full.
    /// Messages are written at once and flushed when the event loop has run what is queued on it,
    /// so that a burst for one connection (a lease change and its state, an ack and its state, a
    /// backlog under load) costs one syscall instead of one per message.
    func deliver(_ message: EncodedMessage) {
        guard !closeSent, phase != .closed else { return }
        let (payload, compressed) = message.payload(for: deflate)
        writeFrame(WebSocketFrame(fin: true, rsv1: compressed, opcode: .text, data: payload))
    }

    /// Writes a frame, flushed at the end of the loop's turn; past the send buffer the client is
    /// too slow and the connection is closed with 4008.
    private func writeFrame(_ frame: WebSocketFrame) {
        guard let context else { return }
        context.write(wrapOutboundOut(frame), promise: nil)
        if !flushQueued {
            flushQueued = true
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.execute { handler.value.flushQueuedWrites() }
        }
        if !context.channel.isWritable {
            close(.tooSlow, "too slow to read: send buffer limit reached")
        }
    }

    private func flushQueuedWrites() {
        flushQueued = false
        context?.flush()
    }

    /// Closes from the server side: sends a close frame, then closes the socket when the peer
    /// answers or after the close timeout.
    func close(_ code: CloseCode, _ reason: String) {
        guard !closeSent, phase != .closed, let context else { return }
        closeSent = true
        pending.removeAll()
        if code == .replaced { disconnectKind = .replaced }
        ServerMetrics.closed(code.rawValue)
        logger.debug("closing session", metadata: ["close.code": .stringConvertible(code.rawValue), "close.reason": .string(reason)])
        var payload = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        payload.writeInteger(code.rawValue)
        payload.writeString(String(decoding: reason.utf8.prefix(120), as: UTF8.self))
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)), promise: nil)
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        closeTimer = context.eventLoop.scheduleTask(in: .milliseconds(configuration.closeTimeoutMs)) {
            loopBound.value.close(promise: nil)
        }
    }

    // MARK: Timers

    /// Called by the loop's `HeartbeatSweep` once per heartbeat interval: drops a client silent for
    /// two intervals, pings the others.
    func heartbeatTick() {
        guard let context, phase != .closed else { return }
        let silence = NIODeadline.now() - lastHeard
        if silence > .milliseconds(2 * configuration.heartbeatMs) {
            logger.debug("client silent for two heartbeats, dropping it")
            context.close(promise: nil)
            return
        }
        guard !closeSent else { return }
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer())), promise: nil)
    }

    private func scheduleExpiry() {
        guard let context else { return }
        expiryTimer?.cancel()
        let remaining = max(0, expiresAtMs - ServerClock.nowMs())
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        expiryTimer = context.eventLoop.scheduleTask(in: .milliseconds(remaining)) {
            loopBound.value.close(.policyViolation, "the access token expired")
        }
    }
}

/// The engine's handle on a session: hops onto the connection's event loop.
final class SessionSink: DeviceSink {
    let sessionID: String
    private let handler: NIOLoopBound<SessionHandler>
    private let eventLoop: any EventLoop

    init(sessionID: String, handler: NIOLoopBound<SessionHandler>, eventLoop: any EventLoop) {
        self.sessionID = sessionID
        self.handler = handler
        self.eventLoop = eventLoop
    }

    /// Always through the loop's queue, even from the loop itself: messages for one connection come
    /// from several threads (the bus, a welcome, a regrant), and writing one at once could overtake
    /// one queued before it (a version 4 after a version 6).
    func send(_ message: EncodedMessage) {
        let handler = self.handler
        eventLoop.execute { handler.value.deliver(message) }
    }

    func close(_ code: CloseCode, reason: String) {
        let handler = self.handler
        eventLoop.execute { handler.value.close(code, reason) }
    }
}
