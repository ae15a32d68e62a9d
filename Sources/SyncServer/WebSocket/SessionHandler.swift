import Logging
import NIOCore
import NIOWebSocket
import PlaybackEngine

/// One device's WebSocket connection after the upgrade, as a plain NIO handler (no task per
/// connection). Its rules are `SessionStateMachine`'s; this carries out what the machine decides
/// (frames, timers, the engine) and delivers what the engine sends through its `SessionSink`.
final class SessionHandler: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let sessionID: String
    private let services: SessionServices
    private let user: UserIdentity
    private var logger: Logger
    private var machine: SessionStateMachine
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
        self.sessionID = sessionID
        self.deflate = deflate
        machine = SessionStateMachine(
            settings: .init(services.configuration), expiresAtMs: token.expiresAtMs, inflates: deflate != nil, nowNs: Self.nowNs)
        var logger = services.logger
        logger[metadataKey: "session.id"] = .string(sessionID)
        logger[metadataKey: "user.id"] = .string(token.identity.userID)
        self.logger = logger
    }

    private static var nowNs: UInt64 { NIODeadline.now().uptimeNanoseconds }

    // MARK: Events in

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        sink = SessionSink(sessionID: sessionID, handler: NIOLoopBound(self, eventLoop: context.eventLoop), eventLoop: context.eventLoop)
        let high = max(services.configuration.sendBufferBytes, 1_024)
        context.channel.setOption(ChannelOptions.writeBufferWaterMark, value: .init(low: high / 2, high: high)).whenFailure { _ in }
        heartbeat = services.heartbeats.sweep(on: context.eventLoop)
        heartbeat?.add(self)
        ServerMetrics.connections.increment()
        ServerMetrics.upgrades.increment()
        run(machine.opened(nowMs: ServerClock.nowMs()))
    }

    func channelInactive(context: ChannelHandlerContext) {
        for timer in [helloTimer, expiryTimer, closeTimer] { timer?.cancel() }
        heartbeat?.remove(self)
        heartbeat = nil
        ServerMetrics.connections.decrement()
        if !machine.handshake.closeSent { ServerMetrics.closed(1006) }
        run(machine.closed())
        logger.debug("session closed", metadata: ["session.disconnect": .string(machine.disconnectKind.rawValue)])
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
            context.close(promise: nil)  // the server allows half-closure (for HTTP); a WebSocket ends with the peer's FIN
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let error = error as? NIOWebSocketError {
            // WebSocketProtocolErrorHandler already sent the close frame and closes the channel.
            if machine.protocolError() {
                ServerMetrics.closed(error == .invalidFrameLength ? CloseCode.messageTooBig.rawValue : CloseCode.protocolError.rawValue)
            }
        } else {
            context.close(promise: nil)
        }
        logger.debug("connection error", metadata: ["error": .string("\(error)")])
    }

    func read(context: ChannelHandlerContext) { run(machine.readRequested()) }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        run(machine.frame(unwrapInboundIn(data), nowNs: Self.nowNs, nowMs: ServerClock.nowMs()))
    }

    /// Called by the loop's `HeartbeatSweep` once per heartbeat interval.
    func heartbeatTick() { run(machine.heartbeat(nowNs: Self.nowNs)) }

    /// Closes from the server side (the engine's replacement notice, a shutdown).
    func close(_ code: CloseCode, _ reason: String) { run(machine.close(code, reason)) }

    /// Sends a message from the engine, written at once and flushed when the loop has run what is
    /// queued on it (a lease change and its state, a backlog under load: one syscall).
    func deliver(_ message: EncodedMessage) {
        guard machine.sends else { return }
        write(message)
    }

    // MARK: Actions out

    private func run(_ actions: [SessionStateMachine.Action]) {
        for action in actions {
            if case .disconnect(let device, let kind) = action {
                // Also once the channel is gone (a welcome that comes back after the socket closed).
                ServerMetrics.sessions.decrement()
                let (engine, user, sessionID) = (services.engine, user, sessionID)
                engine.perform { await engine.disconnect(user: user, device: device, sessionID: sessionID, kind: kind) }
            } else if let context {
                perform(action, context: context)
            }
        }
    }

    private func perform(_ action: SessionStateMachine.Action, context: ChannelHandlerContext) {
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        switch action {
        case .armHelloTimer(let ms):
            helloTimer = context.eventLoop.scheduleTask(in: .milliseconds(ms)) { handler.value.run(handler.value.machine.helloTimedOut()) }
        case .armExpiryTimer(let ms):
            expiryTimer?.cancel()
            expiryTimer = context.eventLoop.scheduleTask(in: .milliseconds(ms)) { handler.value.run(handler.value.machine.tokenExpired()) }
        case .cancelHelloTimer:
            helloTimer?.cancel()
        case .send(let message):
            write(EncodedMessage(message))  // decided with the close that may follow it: sent first
        case .pong(let payload):
            write(WebSocketFrame(fin: true, opcode: .pong, data: payload))
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer())), promise: nil)
        case .close(let step):
            ServerMetrics.closing(step)
            logger.debug("close handshake", metadata: ["close.step": .string("\(step)"), "close.code": .string(step.code.map(String.init) ?? "-")])
            closeTimer = step.perform(on: context, closeTimeout: .milliseconds(services.configuration.closeTimeoutMs)) ?? closeTimer
        case .drop:
            logger.debug("client silent for two heartbeats, dropping it")
            context.close(promise: nil)
        case .submit(let message):
            submit(message, context: context)
        case .read:
            context.read()
        case .disconnect:
            break  // see `run`
        case .countRateLimited:
            ServerMetrics.message("any", result: "rate_limited")
        case .countMalformed(let code):
            ServerMetrics.message("malformed", result: code.rawValue)
        case .roundTrip(let ns):
            ServerMetrics.roundTrip.recordNanoseconds(Int64(clamping: ns))
            sink?.recordRoundTrip(nanoseconds: UInt64(clamping: ns))
        }
    }

    private func submit(_ message: ClientMessage, context: ChannelHandlerContext) {
        guard let sink else { return }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        services.handle(message, session: .init(user: user, device: machine.device, sink: sink)) { outcome in
            // Back on the connection's loop; never inline, so that an answer given at once does
            // not start the next message inside this one.
            eventLoop.execute { handler.value.finished(outcome, for: message) }
        }
    }

    private func finished(_ outcome: SessionServices.Outcome, for message: ClientMessage) {
        ServerMetrics.message(message.type, result: "handled")
        if case .connected(let device) = outcome { logger[metadataKey: "device.id"] = .string(device) }
        run(machine.finished(outcome, for: message, nowMs: ServerClock.nowMs()))
    }

    private func write(_ message: EncodedMessage) {
        let (payload, compressed) = message.payload(for: deflate)
        write(WebSocketFrame(fin: true, rsv1: compressed, opcode: .text, data: payload))
    }

    /// Writes a frame, flushed at the end of the loop's turn; past the send buffer the client is
    /// too slow and the connection is closed with 4008.
    private func write(_ frame: WebSocketFrame) {
        guard let context else { return }
        context.write(wrapOutboundOut(frame), promise: nil)
        if !flushQueued {
            flushQueued = true
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.execute { handler.value.flushQueuedWrites() }
        }
        if !context.channel.isWritable { run(machine.sendBufferFull()) }
    }

    private func flushQueuedWrites() {
        flushQueued = false
        context?.flush()
    }
}
