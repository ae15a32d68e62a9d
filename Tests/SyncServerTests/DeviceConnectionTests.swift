import DeviceSimKit
import NIOCore
import NIOPosix
import PlaybackCore
import Testing

@Suite("DeviceConnection")
struct DeviceConnectionTests {
    /// Answers any request with a 101 and, in the same write, one text frame.
    final class EagerServer: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var reply = ByteBuffer(string: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            let payload = Array(#"{"server_time":2,"t0":1,"type":"clock"}"#.utf8)
            reply.writeBytes([0x81, UInt8(payload.count)] + payload)
            context.writeAndFlush(NIOAny(reply), promise: nil)
        }
    }

    @Test func framesArrivingWithTheUpgradeResponseAreNotLost() async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(EagerServer()) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let inbox = Inbox()
        let connection = try await DeviceConnection.connect(
            to: .init(host: "127.0.0.1", port: server.localAddress?.port ?? 0), token: nil
        ) { event in
            if case .message(let message, _) = event { inbox.push(.message(message)) }
        }
        guard case .message(.clock(let t0, let serverTime))? = await inbox.next(timeout: .seconds(5)) else {
            Issue.record("the frame sent with the 101 was lost")
            return
        }
        #expect(t0 == .integer(1) && serverTime == 2)
        await connection.drop()
        try await server.close()
    }
}
