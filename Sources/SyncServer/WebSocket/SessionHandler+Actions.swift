import Logging
import NIOCore
import NIOWebSocket
import PlaybackEngine

/// What a session does for each action its state machine decides: timers, frames, the close
/// handshake, metrics, and the messages it hands to the engine.
extension SessionHandler {
    func perform(_ action: SessionStateMachine.Action, context: ChannelHandlerContext) {
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
}
