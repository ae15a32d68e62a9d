import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NIOWebSocket
import PlaybackCore

/// What a connection reports: a decoded server message (with its receive time), or its end.
public enum ConnectionEvent: Sendable {
    case message(ServerMessage, receivedNs: UInt64)
    /// A text message that is not a known server message (a newer server, or a bug).
    case undecodable(String)
    /// A compressed message (RSV1; only after offering permessage-deflate): this client does not inflate.
    case compressed(ByteBuffer)
    /// A server message summarized instead of decoded (`Options.summariesOnly`).
    case summary(MessageSummary, receivedNs: UInt64)
    /// The server's ping: it is alive even when nothing changes.
    case pinged(receivedNs: UInt64)
    /// The server's close frame code (nil when the connection just dropped).
    case closed(code: UInt16?, reason: String)
}

/// Why connecting failed.
public enum ConnectError: Error, CustomStringConvertible, Sendable {
    case refused(status: Int, body: String)
    case timedOut
    case invalidURL(String)

    public var description: String {
        switch self {
        case .refused(let status, let body):
            // The daemon's refusals are {"error":{"message":...}}; anything else is shown as it came.
            if let data = body.data(using: .utf8), let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                let message = (object["error"] as? [String: Any])?["message"] as? String
            {
                "the server refused the connection (HTTP \(status)): \(message)"
            } else {
                "the server refused the connection (HTTP \(status)) \(body)"
            }
        case .timedOut: "the connection timed out"
        case .invalidURL(let url): "invalid server URL \(url) (expected ws://host:port)"
        }
    }
}

/// Where the daemon is: `ws://host:port`, or `wss://host:port` over TLS.
public struct ServerAddress: Sendable, Hashable, CustomStringConvertible {
    public var description: String { "\(secure ? "wss" : "ws")://\(host):\(port)" }

    public var host: String
    public var port: Int
    /// TLS (wss://).
    public var secure: Bool

    public init(host: String, port: Int, secure: Bool = false) {
        self.host = host
        self.port = port
        self.secure = secure
    }

    /// Parses `ws://host:port[/path]`, `wss://host:port[/path]` (or `host:port`).
    public init(url: String) throws {
        var rest = url
        var secure = false
        for scheme in ["wss://", "https://"] where rest.hasPrefix(scheme) {
            rest.removeFirst(scheme.count)
            secure = true
        }
        for scheme in ["ws://", "http://"] where rest.hasPrefix(scheme) { rest.removeFirst(scheme.count) }
        let hostPort = rest.split(separator: "/", maxSplits: 1).first.map(String.init) ?? rest
        let parts = hostPort.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]), !parts[0].isEmpty else { throw ConnectError.invalidURL(url) }
        self.init(host: String(parts[0]), port: port, secure: secure)
    }
}

/// A WebSocket connection to `/v1/connect`, on NIO: it can bind a chosen source address (load
/// tests use several 127.0.0.x), decodes server messages on the event loop and hands them to a
/// callback with their receive time.
public final class DeviceConnection: Sendable {
    public let channel: any Channel
    private let codec = MessageCodec()

    private init(channel: any Channel) {
        self.channel = channel
    }

    /// How to connect.
    public struct Options: Sendable {
        /// Local address to connect from (load tests spread over 127.0.0.x).
        public var sourceAddress: String?
        /// The WebSocket path.
        public var path = "/v1/connect"
        /// Send the token as `?access_token=` (as browsers do) instead of `Authorization`.
        public var tokenInQuery = false
        /// An `Origin` header, as a browser sends.
        public var origin: String?
        /// SO_RCVBUF for the socket; small values make a slow reader.
        public var receiveBufferBytes: Int?
        /// Answer the server's pings (a silent client does not).
        public var answerPings = true
        /// Report messages as `.summary` (type and request id, found by a scan) instead of decoding
        /// them: a load generator that does what the nchan reference's client does.
        public var summariesOnly = false
        public var timeout: TimeAmount = .seconds(10)
        /// TLS settings for wss:// (default: the system's trust roots and full verification).
        public var tls: TLSConfiguration?
        /// A `Sec-WebSocket-Extensions` offer (tests of permessage-deflate).
        public var extensions: String?

        public init(sourceAddress: String? = nil) { self.sourceAddress = sourceAddress }
    }

    public static func connect(
        to server: ServerAddress, token: String?, options: Options = Options(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        onEvent: @escaping @Sendable (ConnectionEvent) -> Void
    ) async throws -> DeviceConnection {
        var key = [UInt8](repeating: 0, count: 16)
        var generator = SystemRandomNumberGenerator()
        for index in key.indices { key[index] = generator.next() }
        var path = options.path
        var headers = [
            "Host: \(server.host):\(server.port)", "Upgrade: websocket", "Connection: Upgrade",
            "Sec-WebSocket-Key: \(Data(key).base64EncodedString())", "Sec-WebSocket-Version: 13",
        ]
        if let token {
            if options.tokenInQuery { path += "?access_token=\(token)" } else { headers.append("Authorization: Bearer \(token)") }
        }
        if let origin = options.origin { headers.append("Origin: \(origin)") }
        if let extensions = options.extensions { headers.append("Sec-WebSocket-Extensions: \(extensions)") }
        let request = "GET \(path) HTTP/1.1\r\n" + headers.map { $0 + "\r\n" }.joined() + "\r\n"
        let handshake = group.next().makePromise(of: Void.self)
        let answerPings = options.answerPings
        let summariesOnly = options.summariesOnly
        let tls: NIOSSLContext? =
            server.secure ? try NIOSSLContext(configuration: options.tls ?? .makeClientConfiguration()) : nil
        let serverName = server.host.first?.isNumber == true ? nil : server.host
        var bootstrap = ClientBootstrap(group: group)
            .connectTimeout(options.timeout)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: serverName))
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        UpgradeRequestHandler(
                            request: request, done: handshake, answerPings: answerPings, summariesOnly: summariesOnly, onEvent: onEvent))
                }
            }
        if let sourceAddress = options.sourceAddress {
            bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: sourceAddress, port: 0))
        }
        if let receiveBuffer = options.receiveBufferBytes {
            bootstrap = bootstrap.channelOption(ChannelOptions.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBuffer))
        }
        let timeout = options.timeout
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: server.host, port: server.port).get()
        } catch {
            handshake.fail(error)
            throw error
        }
        channel.eventLoop.scheduleTask(in: timeout) { handshake.fail(ConnectError.timedOut) }
        do {
            try await handshake.futureResult.get()
        } catch {
            try? await channel.close()
            throw error
        }
        return DeviceConnection(channel: channel)
    }

    public func send(_ message: ClientMessage) async throws {
        let data = try codec.encode(message)
        try await channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(bytes: data)))
    }

    /// Sends without waiting for the write (open-loop load).
    public func sendNow(_ message: ClientMessage) {
        guard let data = try? codec.encode(message) else { return }
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(bytes: data)), promise: nil)
    }

    /// Closes cleanly with a close frame (1000 releases the lease at once), then the socket.
    public func close(code: UInt16 = 1000) async {
        var payload = channel.allocator.buffer(capacity: 2)
        payload.writeInteger(code)
        try? await channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: payload))
        let channel = self.channel
        channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }  // if the server never answers
        try? await channel.closeFuture.get()
    }

    /// Drops the connection without a close frame (an abrupt loss).
    public func drop() async {
        try? await channel.close()
    }

    /// Writes bytes to the socket as they are, bypassing the frame encoder: for protocol tests
    /// that need unmasked, reserved or otherwise invalid frames.
    public func writeRaw(_ bytes: ByteBuffer) async throws {
        let channel = self.channel
        guard channel.isActive else { throw ChannelError.ioOnClosedChannel }
        try await channel.eventLoop.flatSubmit {
            do {
                let encoder = try channel.pipeline.syncOperations.context(handlerType: WebSocketFrameEncoder.self)
                return encoder.writeAndFlush(NIOAny(bytes))
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
        }.get()
    }
}

/// Writes the upgrade request, waits for 101, then installs the frame codec.
private final class UpgradeRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    let request: String
    let done: EventLoopPromise<Void>
    let answerPings: Bool
    let onEvent: @Sendable (ConnectionEvent) -> Void
    var received = ByteBuffer()
    var refusedStatus: Int?

    let summariesOnly: Bool

    init(
        request: String, done: EventLoopPromise<Void>, answerPings: Bool, summariesOnly: Bool,
        onEvent: @escaping @Sendable (ConnectionEvent) -> Void
    ) {
        self.summariesOnly = summariesOnly
        self.request = request
        self.done = done
        self.answerPings = answerPings
        self.onEvent = onEvent
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(NIOAny(ByteBuffer(string: request)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        received.writeBuffer(&bytes)
        guard refusedStatus == nil else { return }  // collecting the body of a refusal
        guard let headEnd = received.readableBytesView.firstRange(of: Array("\r\n\r\n".utf8)) else { return }
        let headLength = headEnd.upperBound - received.readerIndex
        let head = received.readString(length: headLength) ?? ""
        let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
        guard status == 101 else {
            // The server answers a refused upgrade and closes: the body is complete at the close.
            refusedStatus = status
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: .milliseconds(500)) { loopBound.value.close(promise: nil) }
            return
        }
        let leftover = received
        do {
            try context.pipeline.syncOperations.addHandler(WebSocketFrameEncoder())
            try context.pipeline.syncOperations.addHandler(ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 24)))
            try context.pipeline.syncOperations.addHandler(ServerFrameHandler(answerPings: answerPings, summariesOnly: summariesOnly, onEvent: onEvent))
        } catch {
            done.fail(error)
            return
        }
        // Frames that came in the same read as the 101 go on before this handler leaves the
        // pipeline (a removed handler's context forwards nothing).
        if leftover.readableBytes > 0 { context.fireChannelRead(NIOAny(leftover)) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        done.succeed()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let refusedStatus {
            done.fail(ConnectError.refused(status: refusedStatus, body: received.readString(length: received.readableBytes) ?? ""))
        } else {
            done.fail(ConnectError.refused(status: 0, body: "connection closed during the handshake"))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        done.fail(error)
        context.close(promise: nil)
    }
}

/// Reassembles server messages, answers pings, reports the close.
private final class ServerFrameHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let answerPings: Bool
    let onEvent: @Sendable (ConnectionEvent) -> Void
    let codec = MessageCodec()
    var text: ByteBuffer?
    /// The message being assembled came with RSV1 (compressed).
    var compressed = false
    var closeCode: UInt16?
    var closeReason = ""

    let summariesOnly: Bool

    init(answerPings: Bool, summariesOnly: Bool, onEvent: @escaping @Sendable (ConnectionEvent) -> Void) {
        self.answerPings = answerPings
        self.summariesOnly = summariesOnly
        self.onEvent = onEvent
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text, .continuation:
            var data = frame.data
            if text == nil {
                text = data
                compressed = frame.rsv1
            } else {
                text?.writeBuffer(&data)
            }
            guard frame.fin, let message = text else { return }
            text = nil
            if compressed {
                onEvent(.compressed(message))
                return
            }
            let now = DispatchTime.now().uptimeNanoseconds
            if summariesOnly, let summary = MessageSummary(message.readableBytesView) {
                onEvent(.summary(summary, receivedNs: now))
            } else if let decoded = try? codec.decodeServerMessage(message.readableBytesView) {
                onEvent(.message(decoded, receivedNs: now))
            } else {
                onEvent(.undecodable(String(decoding: message.readableBytesView, as: UTF8.self)))
            }
        case .ping:
            onEvent(.pinged(receivedNs: DispatchTime.now().uptimeNanoseconds))
            guard answerPings else { return }
            context.writeAndFlush(
                wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.data)), promise: nil)
        case .connectionClose:
            var data = frame.data
            closeCode = data.readInteger(as: UInt16.self)
            closeReason = data.readString(length: data.readableBytes) ?? ""
            var echo = context.channel.allocator.buffer(capacity: 2)
            if let closeCode { echo.writeInteger(closeCode) }
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: echo)))
                .whenComplete { _ in loopBound.value.close(promise: nil) }
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        onEvent(.closed(code: closeCode, reason: closeReason))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
