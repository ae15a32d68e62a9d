import NIOCore
import NIOHTTP1

/// Closes a connection that has not finished its TLS handshake and a complete request head within
/// the deadline: silent sockets and half-sent requests (slowloris) would otherwise hold one of the
/// process's file descriptors for good. Removed once the request is under way; from then on the
/// session's hello timeout (WebSocket) or the HTTP idle timeout (REST) watch the connection.
final class RequestDeadlineHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    static let name = "playback.request-deadline"

    private let timeout: TimeAmount
    private var timer: Scheduled<Void>?

    init(timeoutMs: Int64) {
        self.timeout = .milliseconds(timeoutMs)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            ServerMetrics.requestTimeouts.increment()
            bound.value.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }
}

/// Closes a connection whose bytes are not HTTP, once NIO's `HTTPServerProtocolErrorHandler` has
/// answered 400 (it leaves the closing to the pipeline). Other errors pass on untouched.
final class BadRequestCloseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard error is HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        context.close(promise: nil)
    }
}
