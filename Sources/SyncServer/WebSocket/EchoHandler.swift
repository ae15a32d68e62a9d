import NIOCore
import NIOWebSocket
import PlaybackCore

/// The diagnostics echo (`--diagnostics-echo`, for conformance tests only): the same frame
/// pipeline and limits as `/v1/connect` (NIO's decoder, `FrameAssembler`, UTF-8 validation,
/// size limits, close handling), echoing text and binary messages.
final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private var assembler: FrameAssembler
    private var handshake = CloseHandshake()
    private let closeTimeout: TimeAmount
    private let deflate: PerMessageDeflate?

    init(maxMessageBytes: Int, closeTimeoutMs: Int64, deflate: PerMessageDeflate?) {
        assembler = FrameAssembler(maxMessageBytes: maxMessageBytes, acceptsBinary: true, inflates: deflate != nil)
        closeTimeout = .milliseconds(closeTimeoutMs)
        self.deflate = deflate
    }

    /// Echoes a message, compressed when permessage-deflate was negotiated and it helps.
    private func echo(_ bytes: ByteBuffer, opcode: WebSocketOpcode, context: ChannelHandlerContext) {
        if let deflate, bytes.readableBytes >= PerMessageDeflate.minimumSize,
            let compressed = PerMessageDeflate.compress(bytes, windowBits: deflate.serverWindowBits)
        {
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, rsv1: true, opcode: opcode, data: compressed)), promise: nil)
        } else {
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: opcode, data: bytes)), promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let event = assembler.receive(unwrapInboundIn(data))
        guard !handshake.closeSent else {
            // After our close frame, only the peer's close matters.
            if case .close(let code, _) = event { handshake.peerClosed(code: code).perform(on: context, closeTimeout: closeTimeout) }
            return
        }
        switch event {
        case .none, .pong:
            break
        case .ping(let payload):
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: payload)), promise: nil)
        case .text(let text):
            echo(text, opcode: .text, context: context)
        case .binary(let bytes):
            echo(bytes, opcode: .binary, context: context)
        case .close(let code, _):
            handshake.peerClosed(code: code).perform(on: context, closeTimeout: closeTimeout)
        case .fail(let code, let reason):
            handshake.close(code, reason: reason).perform(on: context, closeTimeout: closeTimeout)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            context.close(promise: nil)
        } else if event is ChannelShouldQuiesceEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if !(error is NIOWebSocketError) { context.close(promise: nil) }
    }
}
