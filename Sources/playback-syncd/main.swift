import ArgumentParser
import Foundation
import Hummingbird
import Logging
import Metrics
import PlaybackEngine
import Prometheus
import RedisClient
import SyncServer

/// `playback-syncd`: reads flags and environment variables, then runs the server until
/// SIGTERM/SIGINT (sessions are closed with 1001).
@main
struct PlaybackSyncd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "playback-syncd",
        abstract: "Real-time playback sync daemon: one active device per user, every change on every device.",
        discussion: "Every option can also be set with the environment variable shown in its help; the flag wins.",
        version: "0.2.0")

    @Option(help: "Address to listen on. [PLAYBACK_HOST, default 127.0.0.1]")
    var host: String?
    @Option(help: "Port to listen on (0 picks one). [PLAYBACK_PORT, default 8080]")
    var port: Int?
    @Option(help: "HS256 secret for access tokens, at least 32 bytes. [PLAYBACK_JWT_SECRET, default: a development secret]")
    var jwtSecret: String?
    @Option(help: "Where playback lives: memory (this process only) or redis (shared by several daemons). [PLAYBACK_ENGINE, default memory]")
    var engine: String?
    @Option(help: "Redis for --engine redis: redis://[user:password@]host[:port][/db]. [PLAYBACK_REDIS_URL, default redis://127.0.0.1:6379/0]")
    var redisUrl: String?
    @Option(help: "How long an active device that vanished keeps the lease, ms. [PLAYBACK_GRACE_MS, default 10000]")
    var graceMs: Int64?
    @Option(help: "Server ping interval, ms. [PLAYBACK_HEARTBEAT_MS, default 15000]")
    var heartbeatMs: Int64?
    @Option(help: "Time allowed for hello after the upgrade, ms. [PLAYBACK_HELLO_TIMEOUT_MS, default 10000]")
    var helloTimeoutMs: Int64?
    @Option(help: "Largest frame and message, bytes. [PLAYBACK_MAX_MESSAGE_BYTES, default 65536]")
    var maxMessageBytes: Int?
    @Option(help: "Messages per second per connection (burst twice that). [PLAYBACK_MESSAGES_PER_SECOND, default 100]")
    var messagesPerSecond: Int?
    @Option(help: "Most devices of one user connected at once. [PLAYBACK_MAX_DEVICES_PER_USER, default 100]")
    var maxDevicesPerUser: Int?
    @Option(help: "Outbound bytes buffered per connection before closing it with 4008. [PLAYBACK_SEND_BUFFER_BYTES, default 1048576]")
    var sendBufferBytes: Int?
    @Option(help: "Comma-separated allowed Origins for browsers; empty allows any. [PLAYBACK_ALLOWED_ORIGINS]")
    var allowedOrigins: String?
    @Option(help: "trace, debug, info, notice, warning, error or critical. [PLAYBACK_LOG_LEVEL, default info]")
    var logLevel: String?
    @Flag(help: "Test only: serve an unauthenticated echo at /v1/diagnostics/echo on the same WebSocket pipeline, for conformance suites.")
    var diagnosticsEcho = false

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        func setting(_ flag: String?, _ name: String) -> String? { flag ?? environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        func number<T: LosslessStringConvertible>(_ flag: T?, _ name: String) throws -> T? {
            if let flag { return flag }
            guard let text = setting(nil, name) else { return nil }
            guard let value = T(text) else { throw ValidationError("\(name)=\(text) is not a valid number") }
            return value
        }

        let level = setting(logLevel, "PLAYBACK_LOG_LEVEL").map { Logger.Level(rawValue: $0.lowercased()) } ?? .info
        guard let level else { throw ValidationError("unknown log level") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logger = Logger(label: "playback-syncd")

        var config = ServerConfiguration()
        config.host = setting(host, "PLAYBACK_HOST") ?? config.host
        config.port = try number(port, "PLAYBACK_PORT") ?? config.port
        if let secret = setting(jwtSecret, "PLAYBACK_JWT_SECRET") { config.jwtSecret = secret }
        config.engine.graceMs = try number(graceMs, "PLAYBACK_GRACE_MS") ?? config.engine.graceMs
        config.heartbeatMs = try number(heartbeatMs, "PLAYBACK_HEARTBEAT_MS") ?? config.heartbeatMs
        config.helloTimeoutMs = try number(helloTimeoutMs, "PLAYBACK_HELLO_TIMEOUT_MS") ?? config.helloTimeoutMs
        config.maxMessageBytes = try number(maxMessageBytes, "PLAYBACK_MAX_MESSAGE_BYTES") ?? config.maxMessageBytes
        if let rate = try number(messagesPerSecond, "PLAYBACK_MESSAGES_PER_SECOND") {
            config.messagesPerSecond = rate
            config.messageBurst = 2 * rate
        }
        config.engine.maxDevicesPerUser = try number(maxDevicesPerUser, "PLAYBACK_MAX_DEVICES_PER_USER") ?? config.engine.maxDevicesPerUser
        config.sendBufferBytes = try number(sendBufferBytes, "PLAYBACK_SEND_BUFFER_BYTES") ?? config.sendBufferBytes
        if let origins = setting(allowedOrigins, "PLAYBACK_ALLOWED_ORIGINS") {
            config.allowedOrigins = origins.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        }
        config.diagnosticsEcho = diagnosticsEcho
        if diagnosticsEcho { logger.warning("the diagnostics echo is enabled: /v1/diagnostics/echo is open to anyone (test only)") }
        let engineName = setting(engine, "PLAYBACK_ENGINE") ?? "memory"
        let playbackEngine: any PlaybackEngine
        switch engineName {
        case "memory":
            playbackEngine = MemoryEngine(configuration: config.engine, logger: logger)
        case "redis":
            let url = setting(redisUrl, "PLAYBACK_REDIS_URL") ?? "redis://127.0.0.1:6379/0"
            let redis = RedisEngine(redis: try RedisConfiguration(url: url), configuration: config.engine, logger: logger)
            logger.info("connecting to redis", metadata: ["redis.url": .string(url), "node.id": .string(redis.nodeID)])
            await redis.start()
            playbackEngine = redis
        default:
            throw ValidationError("unknown engine \(engineName): use memory or redis")
        }

        if config.usesDevelopmentSecret {
            logger.warning(
                "NO JWT SECRET CONFIGURED: using the public development secret. Anyone can mint tokens. Set --jwt-secret or PLAYBACK_JWT_SECRET in production.")
        }
        let port = config.port
        let app = try await buildApplication(config, engine: playbackEngine, metrics: registry, logger: logger) { channel in
            logger.info(
                "listening", metadata: [
                    "address": .string("\(channel.localAddress?.description ?? "?")"), "engine": .string(engineName),
                    "configured.port": .stringConvertible(port),
                ])
        }
        try await app.runService()
        await playbackEngine.shutdown()
    }
}
