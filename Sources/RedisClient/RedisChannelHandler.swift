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
final class RedisChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = RedisRequest
    typealias OutboundOut = ByteBuffer

    private let parser = RESPParser()
    private var pending = Deque<EventLoopPromise<RESPValue>>()
    private let onPush: (@Sendable (RESPValue) -> Void)?
    private var failure: RedisError?

    init(onPush: (@Sendable (RESPValue) -> Void)?) {
        self.onPush = onPush
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        if let failure {
            request.promise.fail(failure)
            promise?.fail(failure)
            return
        }
        pending.append(request.promise)
        context.write(wrapOutboundOut(request.bytes), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        parser.feed(unwrapInboundIn(data))
        do {
            while let reply = try parser.next() {
                if let onPush, Self.isPush(reply) {
                    onPush(reply)
                } else if let promise = pending.popFirst() {
                    promise.succeed(reply)
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

    private func failAll(_ error: RedisError) {
        if failure == nil { failure = error }
        while let promise = pending.popFirst() { promise.fail(error) }
    }

    /// `["message", channel, payload]` and `["pmessage", pattern, channel, payload]` on a subscribed connection.
    static func isPush(_ reply: RESPValue) -> Bool {
        guard case .array(let parts) = reply, let kind = parts.first?.string else { return false }
        return kind == "message" || kind == "pmessage"
    }
}
