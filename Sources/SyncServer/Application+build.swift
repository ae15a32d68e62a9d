import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import PlaybackEngine
import Prometheus

/// A configuration the daemon refuses to start with.
public struct ConfigurationError: Error, CustomStringConvertible {
    public var description: String

    public init(description: String) { self.description = description }
}

/// The token checks `configuration` asks for; an identity provider's keys are loaded first. A key
/// file that cannot be used stops the start; a URL that cannot be fetched yet is retried on use
/// (its tokens are answered 503 meanwhile), so that daemons can start while the provider is down.
func makeAuthenticator(_ configuration: ServerConfiguration, logger: Logger) async throws -> Authenticator {
    var issuerKeys: IssuerKeys?
    if let source = configuration.jwks {
        let keys = IssuerKeys(source: source, settings: configuration.jwksSettings, logger: logger)
        do {
            try await keys.load()
        } catch {
            if case .file = source { throw ConfigurationError(description: "the JWKS \(source) cannot be used: \(error)") }
            logger.error(
                "the identity provider's keys could not be fetched; its tokens are refused with 503 until they are",
                metadata: ["jwks": .string(source.description), "error": .string(error.description)])
        }
        issuerKeys = keys
    }
    return await Authenticator(
        secret: configuration.acceptedSecret, issuerKeys: issuerKeys, rules: configuration.tokenRules,
        allowedOrigins: configuration.allowedOrigins)
}

/// Builds the HTTP server: the WebSocket endpoint and the HTTP routes on one port, over `engine`.
/// Run it in a ServiceGroup after `EngineService(engine)`, as `playback-syncd` and the tests do.
///
/// - Parameters:
///   - metrics: the registry `/metrics` renders (the one `MetricsSystem` was bootstrapped with).
///   - onServerRunning: called with the listening channel (its local address carries the port).
public func buildApplication(
    _ configuration: ServerConfiguration,
    engine: any PlaybackEngine,
    metrics: PrometheusCollectorRegistry? = nil,
    logger: Logger = Logger(label: "playback-syncd"),
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) async throws -> some ApplicationProtocol {
    try configuration.validate()
    let authenticator = try await makeAuthenticator(configuration, logger: logger)
    let services = SessionServices(engine: engine, authenticator: authenticator, configuration: configuration, logger: logger)

    let router = Router()
    // A span per HTTP request, continuing the caller's W3C traceparent.
    if CommandTracing.isEnabled { router.middlewares.add(TraceMiddleware()) }
    OpsRoutes(engine: engine, metrics: metrics).register(on: router)
    ConnectRoute(authenticator: authenticator).register(on: router)
    WebRoutes(authenticator: authenticator, developmentTokens: configuration.usesDevelopmentSecret).register(on: router)
    let player = PlayerRoutes(
        engine: engine, authenticator: authenticator,
        limiter: UserRateLimiter(rate: configuration.messagesPerSecond, burst: configuration.messageBurst), logger: logger)
    player.register(on: router)
    SeedRoutes(player: player).register(on: router)

    let tls = try configuration.tls.map(tlsConfiguration)
    return Application(
        router: router,
        server: HTTPServerBuilder { responder in
            let channel = SyncChildChannel(responder: responder, services: services)
            guard let tls else { return channel }
            return try TLSChannel(channel, tlsConfiguration: tls)
        },
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "playback-syncd"),
        services: authenticator.issuerKeys.map { [$0] } ?? [],
        onServerRunning: onServerRunning,
        logger: logger)
}

/// The server side of TLS from PEM files; a missing or unreadable file stops the start.
func tlsConfiguration(_ files: ServerConfiguration.TLSFiles) throws -> TLSConfiguration {
    do {
        let chain = try NIOSSLCertificate.fromPEMFile(files.certificatePath).map { NIOSSLCertificateSource.certificate($0) }
        guard !chain.isEmpty else { throw ConfigurationError(description: "no certificate in \(files.certificatePath)") }
        let key = try NIOSSLPrivateKey(file: files.keyPath, format: .pem)
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        tls.minimumTLSVersion = .tlsv12
        return tls
    } catch let error as ConfigurationError {
        throw error
    } catch {
        throw ConfigurationError(description: "TLS: cannot load \(files.certificatePath) / \(files.keyPath): \(error)")
    }
}
