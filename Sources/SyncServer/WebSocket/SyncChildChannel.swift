import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket
import PlaybackEngine

/// The server's per-connection setup: one port for everything. `GET /v1/connect` with a valid
/// token and allowed Origin upgrades to a WebSocket served by a `SessionHandler` (plain NIO, no
/// task per connection); every other request, and a refused upgrade, goes to the Hummingbird
/// router (which answers the refusal with 401/403).
struct SyncChildChannel: ServerChildChannel, HTTPChannelHandler {
    enum Negotiated: Sendable {
        case webSocket
        case http(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        /// The upgrade was refused; the request is not replayed, so it is answered here.
        case refused(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, AuthError)
    }

    struct Value: ServerChildChannelValue {
        let negotiated: EventLoopFuture<Negotiated>
        let channel: any Channel
    }

    static let webSocketPath = "/v1/connect"
    static let echoPath = "/v1/diagnostics/echo"

    let responder: HTTPChannelHandler.Responder
    let services: SessionServices
    var http: HTTP1Channel.Configuration {
        HTTP1Channel.Configuration(idleTimeout: .milliseconds(services.configuration.requestTimeoutMs))
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            // Before anything else: the TLS handshake (added before this) and the request head must
            // be done within the request timeout.
            try channel.pipeline.syncOperations.addHandler(
                RequestDeadlineHandler(timeoutMs: services.configuration.requestTimeoutMs), name: RequestDeadlineHandler.name)
            let accepted = NIOLoopBoundBox<AccessToken?>(nil, eventLoop: channel.eventLoop)
            let refusal = NIOLoopBoundBox<AuthError?>(nil, eventLoop: channel.eventLoop)
            let echo = NIOLoopBoundBox(false, eventLoop: channel.eventLoop)
            let deflate = NIOLoopBoundBox<PerMessageDeflate?>(nil, eventLoop: channel.eventLoop)
            let services = self.services
            /// The 101's extra headers: the accepted permessage-deflate parameters, if any.
            @Sendable func upgradeHeaders(_ head: HTTPRequestHead) -> HTTPHeaders {
                guard services.configuration.permessageDeflate,
                    let negotiated = PerMessageDeflate.negotiate(head.headers["Sec-WebSocket-Extensions"])
                else { return HTTPHeaders() }
                deflate.value = negotiated
                return HTTPHeaders([("Sec-WebSocket-Extensions", negotiated.responseHeader)])
            }
            let upgrader = NIOTypedWebSocketServerUpgrader<Negotiated>(
                maxFrameSize: services.configuration.maxMessageBytes,
                enableAutomaticErrorHandling: true,
                shouldUpgrade: { channel, head in
                    let path = head.uri.split(separator: "?", maxSplits: 1).first ?? ""
                    if path == Substring(Self.echoPath), services.configuration.diagnosticsEcho {
                        echo.value = true
                        return channel.eventLoop.makeSucceededFuture(upgradeHeaders(head))
                    }
                    guard path == Substring(Self.webSocketPath) else {
                        return channel.eventLoop.makeSucceededFuture(nil)
                    }
                    let verified = channel.eventLoop.makePromise(of: Result<AccessToken, AuthError>.self)
                    let started = services.engine.perform {
                        do throws(AuthError) {
                            verified.succeed(.success(try await services.authenticator.authenticate(head)))
                        } catch {
                            ServerMetrics.rejectedUpgrade(error == .foreignOrigin ? "origin" : "token")
                            verified.succeed(.failure(error))
                        }
                    }
                    if !started { verified.fail(ShuttingDown()) }
                    return verified.futureResult.map { result in
                        switch result {
                        case .success(let token):
                            accepted.value = token
                            return upgradeHeaders(head)
                        case .failure(let error):
                            refusal.value = error
                            return nil
                        }
                    }
                },
                upgradePipelineHandler: { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        if echo.value {
                            try channel.pipeline.syncOperations.addHandler(EchoHandler(
                                maxMessageBytes: services.configuration.maxMessageBytes, closeTimeoutMs: services.configuration.closeTimeoutMs,
                                deflate: deflate.value))
                            return Negotiated.webSocket
                        }
                        guard let token = accepted.value else { throw ChannelError.inappropriateOperationForState }
                        let handler = SessionHandler(
                            services: services, token: token, sessionID: SessionID.make(), deflate: deflate.value)
                        try channel.pipeline.syncOperations.addHandler(handler)
                        return Negotiated.webSocket
                    }
                })
            let http = self.http
            let upgrade = NIOTypedHTTPServerUpgradeConfiguration(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
                        try channel.pipeline.syncOperations.addHandlers(http.additionalChannelHandlers())
                        try channel.pipeline.syncOperations.addHandler(
                            HTTPConnectionStateHandler(idleTimeout: http.idleTimeout.map { .init($0) }, logger: logger))
                        let http = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
                        if let error = refusal.value { return Negotiated.refused(http, error) }
                        return Negotiated.http(http)
                    }
                })
            var configuration = NIOUpgradableHTTPServerPipelineConfiguration<Negotiated>(upgradeConfiguration: upgrade)
            configuration.enablePipelining = false
            // A request that is not HTTP gets 400 and the connection is closed.
            configuration.enableErrorHandling = true
            configuration.enableResponseHeaderValidation = false
            let negotiated = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: configuration)
            try channel.pipeline.syncOperations.addHandler(BadRequestCloseHandler())
            return Value(negotiated: negotiated, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            let negotiated = try await value.negotiated.get()
            // The request is under way: the hello timeout or the HTTP idle timeout take over.
            try? await value.channel.pipeline.removeHandler(name: RequestDeadlineHandler.name).get()
            switch negotiated {
            case .webSocket:
                return  // the SessionHandler owns the connection from here on
            case .http(let http):
                await handleHTTP(asyncChannel: http, logger: logger)
            case .refused(let http, let error):
                try await http.executeThenClose { _, outbound in
                    let (status, code, headers) = ErrorResponse.refusal(error)
                    let body = ErrorResponse.body(status: status, code: code, message: error.message)
                    var fields: HTTPFields = [.connection: "close", .contentType: "application/json", .contentLength: String(body.readableBytes)]
                    fields.append(contentsOf: headers)
                    try await outbound.write(contentsOf: [.head(HTTPResponse(status: status, headerFields: fields)), .body(body), .end(nil)])
                }
            }
        } catch {
            // Not HTTP (NIO's error handler has answered 400), or the connection broke: close it.
            logger.debug("connection ended during negotiation", metadata: ["error": .string("\(error)")])
            try? await value.channel.close()
        }
    }
}

/// Random session ids.
enum SessionID {
    static func make() -> String {
        var generator = SystemRandomNumberGenerator()
        return "s-" + String(generator.next() & 0xFFFF_FFFF_FFFF, radix: 16)
    }
}

/// The engine no longer takes work: an upgrade that arrives then is refused.
struct ShuttingDown: Error {}
