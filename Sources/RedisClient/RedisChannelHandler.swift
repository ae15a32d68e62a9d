import DequeModule
import NIOCore

/// A command on its way to Redis, with the promise its reply completes.
struct RedisRequest {
    var bytes: ByteBuffer
    var promise: EventLoopPromise<RESPValue>
    /// False for a command whose answer comes as a push (`SUNSUBSCRIBE` on a sharded pub/sub
    /// connection): the promise completes once it is written.
    var expectsReply = true
}

/// Matches replies to commands: hiredis's reader parses what `channelRead` receives, and each
/// reply completes the oldest pending promise (Redis answers in order, so pipelining is free).
/// Pub/sub messages (the kinds in `pushKinds`) are not replies and go to `onPush`. When the connection ends, every pending
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
    private let pushKinds: Set<String>
    private let timeout: TimeAmount
    private var failure: RedisError?
    private var timer: RepeatedTask?

    init(timeoutMs: Int64, onPush: (@Sendable (RESPValue) -> Void)?, pushKinds: Set<String> = RedisChannelHandler.messageKinds) {
        self.timeout = .milliseconds(timeoutMs)
        self.onPush = onPush
        self.pushKinds = pushKinds
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
        guard request.expectsReply else {
            let written = promise ?? context.eventLoop.makePromise()
            written.futureResult.whenComplete { result in
                switch result {
                case .success: request.promise.succeed(.simpleString("OK"))
                case .failure(let error): request.promise.fail(RedisError(.connectionClosed, "the command was not sent: \(error)"))
                }
            }
            context.write(wrapOutboundOut(request.bytes), promise: written)
            return
        }
        pending.append(Pending(promise: request.promise, deadline: .now() + timeout))
        context.write(wrapOutboundOut(request.bytes), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        parser.feed(unwrapInboundIn(data))
        do {
            while let reply = try parser.next() {
                if let onPush, Self.kind(of: reply).map(pushKinds.contains) == true {
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
    static let messageKinds: Set<String> = ["message", "pmessage", "smessage"]

    /// On a sharded pub/sub connection also `["sunsubscribe", channel, count]`: Redis sends it by
    /// itself when the channel's slot moved away (a migration, a failover).
    static let shardedKinds = messageKinds.union(["sunsubscribe"])

    static func kind(of reply: RESPValue) -> String? {
        guard case .array(let parts) = reply, parts.count >= 3, let kind = parts.first?.string else { return nil }
        return kind
    }
}
