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
    let services: SessionServices
    let user: UserIdentity
    var logger: Logger
    var machine: SessionStateMachine
    var context: ChannelHandlerContext?
    var sink: SessionSink?
    var helloTimer: Scheduled<Void>?
    var expiryTimer: Scheduled<Void>?
    var closeTimer: Scheduled<Void>?
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
            // Drain: every device is told to come back at its own moment of the window.
            let window = services.configuration.effectiveDrainWindowMs
            close(.goingAway, Reconnecting.closeReason("server going away", retryAfterMs: Int64.random(in: 0...window)))
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

    func run(_ actions: [SessionStateMachine.Action]) {
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

    func write(_ message: EncodedMessage) {
        let (payload, compressed) = message.payload(for: deflate)
        write(WebSocketFrame(fin: true, rsv1: compressed, opcode: .text, data: payload))
    }

    /// Writes a frame, flushed at the end of the loop's turn; past the send buffer the client is
    /// too slow and the connection is closed with 4008.
    func write(_ frame: WebSocketFrame) {
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
