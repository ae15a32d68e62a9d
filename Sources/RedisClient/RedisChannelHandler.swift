import DequeModule
import NIOCore

/// A command on its way to Redis, with the promise its reply completes.
struct RedisRequest {
    var bytes: ByteBuffer
    var promise: EventLoopPromise<RESPValue>
}

/// Matches replies to commands: hiredis's reader parses what `channelRead` receives, and each
/// reply completes the oldest pending promise (Redis answers in order, so pipelining is free).
/// Pub/sub messages are not replies and go to `onPush`. When the connection ends, every pending
/// command fails with `connectionClosed`.
///
/// Timeouts: every pending command carries its deadline, and one timer per connection looks at
/// the oldest one (replies come in order, so it is the first to be late). A late reply closes
/// the connection, failing everything pending with `timeout`: its replies can no longer be matched.
final class RedisChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = RedisRequest
    typealias OutboundOut = ByteBuffer

    private struct Pending {
        var promise: EventLoopPromise<RESPValue>
        var deadline: NIODeadline
    }

    private let parser = RESPParser()
    private var pending = Deque<Pending>()
    private let onPush: (@Sendable (RESPValue) -> Void)?
    private let timeout: TimeAmount
    private var failure: RedisError?
    private var timer: RepeatedTask?

    init(timeoutMs: Int64, onPush: (@Sendable (RESPValue) -> Void)?) {
        self.timeout = .milliseconds(timeoutMs)
        self.onPush = onPush
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // A tenth of the timeout between checks: a late reply is noticed within 110 % of it.
        let interval = TimeAmount.nanoseconds(max(timeout.nanoseconds / 10, 5_000_000))
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            handler.value.checkDeadline(context: boundContext.value)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        failAll(RedisError(.connectionClosed, "the connection to Redis closed"))
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        if let failure {
            request.promise.fail(failure)
            promise?.fail(failure)
            return
        }
        pending.append(Pending(promise: request.promise, deadline: .now() + timeout))
        context.write(wrapOutboundOut(request.bytes), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        parser.feed(unwrapInboundIn(data))
        do {
            while let reply = try parser.next() {
                if let onPush, Self.isPush(reply) {
                    onPush(reply)
                } else if let oldest = pending.popFirst() {
                    oldest.promise.succeed(reply)
                } else {
                    failAll(RedisError(.protocolError, "a reply nobody asked for: \(reply)"))
                    context.close(promise: nil)
                    return
                }
            }
        } catch {
            failAll(RedisError(.protocolError, "\(error)"))
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(RedisError(.connectionClosed, "the connection to Redis closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        failAll(RedisError(.connectionClosed, "\(error)"))
        context.close(promise: nil)
    }

    private func checkDeadline(context: ChannelHandlerContext) {
        guard let oldest = pending.first, oldest.deadline < .now() else { return }
        failAll(RedisError(.timeout, "no reply within \(timeout.nanoseconds / 1_000_000) ms"))
        context.close(promise: nil)
    }

    private func failAll(_ error: RedisError) {
        if failure == nil { failure = error }
        while let oldest = pending.popFirst() { oldest.promise.fail(error) }
    }

    /// `["message", channel, payload]`, `["pmessage", pattern, channel, payload]` and
    /// `["smessage", channel, payload]` on a subscribed connection.
    static func isPush(_ reply: RESPValue) -> Bool {
        guard case .array(let parts) = reply, let kind = parts.first?.string else { return false }
        return kind == "message" || kind == "pmessage" || kind == "smessage"
    }
}
