import ArgumentParser
import Foundation
import Logging
import Metrics
import PlaybackStore
import Prometheus
import RedisClient
import SyncServer

/// `playback-syncd serve` (the default): the daemon.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon (the default command).",
        discussion: "Every option can also be set with the environment variable shown in its help; the flag wins.")

    @Option(help: "Address to listen on. [PLAYBACK_HOST, default 127.0.0.1]")
    var host: String?
    @Option(help: "Port to listen on (0 picks one). [PLAYBACK_PORT, default 8080]")
    var port: Int?
    @Option(help: "HS256 secret for access tokens, at least 32 bytes. [PLAYBACK_JWT_SECRET, default: with --jwks none (HS256 refused), else the public development secret, on loopback only]")
    var jwtSecret: String?
    @OptionGroup(title: "Access tokens from an identity provider") var tokens: TokenOptions
    @Flag(help: "Serve with the public development secret on an address other than loopback: anyone who can reach it can mint tokens. For demos only.")
    var insecureDevelopmentSecretOnNetwork = false
    @Option(help: "Where playback lives: memory (this process only) or redis (shared by several daemons). [PLAYBACK_ENGINE, default memory]")
    var engine: String?
    @Option(help: "Redis for --engine redis: redis://[user:password@]host[:port][/db]. [PLAYBACK_REDIS_URL, default redis://127.0.0.1:6379/0]")
    var redisUrl: String?
    @Option(help: "Time to connect to Redis, and for a command's reply before the command fails and its connection is replaced, ms. [PLAYBACK_REDIS_TIMEOUT_MS, default 2000]")
    var redisTimeoutMs: Int64?
    @Option(help: "How long an active device that vanished keeps the lease, ms. [PLAYBACK_GRACE_MS, default 10000]")
    var graceMs: Int64?
    @Option(help: "How long a device that declared transfer_confirm has to report that it plays after a transfer, ms; unconfirmed, playback goes back. [PLAYBACK_TRANSFER_CONFIRM_MS, default 3000]")
    var transferConfirmMs: Int64?
    @Option(help: "How long a playback restored after Redis lost it waits for a newer snapshot another daemon holds before changes commit on top of it (they get unavailable with a retry hint meanwhile), ms; 0 takes the first restore. [PLAYBACK_RESTORE_SETTLE_MS, default 1000]")
    var restoreSettleMs: Int64?
    @Option(help: "Past this lag on the bus (a change's way back from Redis to this daemon), new commands are refused with unavailable and a retry hint instead of acknowledged while devices fall behind, ms; 0 never sheds. [PLAYBACK_MAX_BUS_LAG_MS, default 500]")
    var maxBusLagMs: Int64?
    @Option(help: "On SIGTERM each device is closed with 1001 and told to come back after a random moment of this window (at most half the grace), so that they reconnect elsewhere spread out, ms. [PLAYBACK_DRAIN_WINDOW_MS, default 5000]")
    var drainWindowMs: Int64?
    @Option(help: "Server ping interval, ms. [PLAYBACK_HEARTBEAT_MS, default 15000]")
    var heartbeatMs: Int64?
    @Option(help: "Time allowed for hello after the upgrade, ms. [PLAYBACK_HELLO_TIMEOUT_MS, default 10000]")
    var helloTimeoutMs: Int64?
    @Option(help: "Time allowed for a new connection's TLS handshake and request head, and the longest an HTTP connection may stay idle, ms. [PLAYBACK_REQUEST_TIMEOUT_MS, default 10000]")
    var requestTimeoutMs: Int64?
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
    @Option(help: "text (one line per record) or json (one JSON object per line: ts, level, logger, message, source and the metadata). [PLAYBACK_LOG_FORMAT, default text]")
    var logFormat: String?
    @Flag(help: "Test only: serve an unauthenticated echo at /v1/diagnostics/echo on the same WebSocket pipeline, for conformance suites.")
    var diagnosticsEcho = false
    @Flag(help: "Offer permessage-deflate (RFC 7692, no context takeover: a broadcast is compressed once for all). [PLAYBACK_PERMESSAGE_DEFLATE=1]")
    var permessageDeflate = false
    @Option(help: "PEM certificate chain: serve wss:// and https:// (with --tls-key). [PLAYBACK_TLS_CERT]")
    var tlsCert: String?
    @Option(help: "PEM private key for --tls-cert. [PLAYBACK_TLS_KEY]")
    var tlsKey: String?
    @Option(help: "Send traces to this OpenTelemetry collector (OTLP/HTTP), e.g. http://127.0.0.1:4318/v1/traces. [PLAYBACK_OTLP_TRACES_URL, default: no tracing]")
    var otlpTracesUrl: String?
    @Option(help: "protobuf or json, for --otlp-traces-url. [PLAYBACK_OTLP_PROTOCOL, default protobuf]")
    var otlpProtocol: String?
    @Option(help: "Share of commands traced when the caller did not decide (a traceparent's sampled flag wins), 0–1; 1 costs about 60 % more CPU per command. [PLAYBACK_TRACE_SAMPLE_RATIO, default 0.01]")
    var traceSampleRatio: Double?
    @OptionGroup var postgres: PostgresOptions
    @Option(help: "Where tracks come from: postgres (the tracks tables, cached in memory) or builtin (300 demo tracks). [PLAYBACK_CATALOG, default postgres when --postgres-url is set]")
    var catalog: String?
    @Option(help: "Least time between two snapshots of one user's playback in PostgreSQL, ms (lease changes are written at once). [PLAYBACK_SNAPSHOT_INTERVAL_MS, default 1000]")
    var snapshotIntervalMs: Int64?
    @Option(help: "A user with no device present, no lease and no change for this long leaves Redis once PostgreSQL holds their snapshot, and is restored from it on the next access; 0 keeps everyone. Needs --postgres-url (without PostgreSQL every user stays), ms. [PLAYBACK_IDLE_TTL_MS, default 3600000]")
    var idleTtlMs: Int64?

    func run() async throws {
        try bootstrapLogging(logLevel, format: logFormat)
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logger = Logger(label: "playback-syncd")

        var config = ServerConfiguration()
        config.host = setting(host, "PLAYBACK_HOST") ?? config.host
        config.port = try number(port, "PLAYBACK_PORT") ?? config.port
        // An empty secret is a mistake (an unfilled template, a missing variable), not a request for
        // the development secret.
        if jwtSecret == "" || (jwtSecret == nil && ProcessInfo.processInfo.environment["PLAYBACK_JWT_SECRET"] == "") {
            throw ValidationError(
                "the JWT secret is set but empty: give --jwt-secret or PLAYBACK_JWT_SECRET at least 32 bytes, or leave both unset to use the development secret on loopback")
        }
        if let secret = setting(jwtSecret, "PLAYBACK_JWT_SECRET") { config.jwtSecret = secret }
        config.insecureDevelopmentSecretOnNetwork = insecureDevelopmentSecretOnNetwork
        try tokens.apply(to: &config)
        config.engine.graceMs = try number(graceMs, "PLAYBACK_GRACE_MS") ?? config.engine.graceMs
        if let confirmMs = try number(transferConfirmMs, "PLAYBACK_TRANSFER_CONFIRM_MS") {
            guard confirmMs > 0 else { throw ValidationError("--transfer-confirm-ms must be positive") }
            config.engine.limits.transferConfirmMs = confirmMs
        }
        if let settleMs = try number(restoreSettleMs, "PLAYBACK_RESTORE_SETTLE_MS") {
            guard settleMs >= 0 else { throw ValidationError("--restore-settle-ms must not be negative") }
            config.engine.restoreSettleMs = settleMs
        }
        if let lagMs = try number(maxBusLagMs, "PLAYBACK_MAX_BUS_LAG_MS") {
            guard lagMs >= 0 else { throw ValidationError("--max-bus-lag-ms must not be negative") }
            config.engine.maxBusLagMs = lagMs
        }
        if let window = try number(drainWindowMs, "PLAYBACK_DRAIN_WINDOW_MS") {
            guard window >= 0 else { throw ValidationError("--drain-window-ms must not be negative") }
            config.drainWindowMs = window
        }
        config.heartbeatMs = try number(heartbeatMs, "PLAYBACK_HEARTBEAT_MS") ?? config.heartbeatMs
        config.helloTimeoutMs = try number(helloTimeoutMs, "PLAYBACK_HELLO_TIMEOUT_MS") ?? config.helloTimeoutMs
        config.requestTimeoutMs = try number(requestTimeoutMs, "PLAYBACK_REQUEST_TIMEOUT_MS") ?? config.requestTimeoutMs
        guard config.requestTimeoutMs > 0 else { throw ValidationError("--request-timeout-ms must be positive") }
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
        config.permessageDeflate = permessageDeflate || ["1", "true", "yes"].contains(setting(nil, "PLAYBACK_PERMESSAGE_DEFLATE")?.lowercased() ?? "")
        switch (setting(tlsCert, "PLAYBACK_TLS_CERT"), setting(tlsKey, "PLAYBACK_TLS_KEY")) {
        case (let cert?, let key?): config.tls = .init(certificatePath: cert, keyPath: key)
        case (nil, nil): break
        default: throw ValidationError("--tls-cert and --tls-key go together")
        }
        do {
            try config.validate()
        } catch {
            throw ValidationError(error.description)
        }

        var daemon = DaemonConfiguration(server: config)
        switch setting(engine, "PLAYBACK_ENGINE") ?? "memory" {
        case "memory":
            daemon.engine = .memory
        case "redis":
            var redis = try RedisConfiguration(url: setting(redisUrl, "PLAYBACK_REDIS_URL") ?? "redis://127.0.0.1:6379/0")
            if let timeout = try number(redisTimeoutMs, "PLAYBACK_REDIS_TIMEOUT_MS") {
                guard timeout > 0 else { throw ValidationError("--redis-timeout-ms must be positive") }
                redis.commandTimeoutMs = timeout
                redis.connectTimeoutMs = timeout
            }
            daemon.engine = .redis(redis)
        case let other:
            throw ValidationError("unknown engine \(other): use memory or redis")
        }
        if let url = setting(otlpTracesUrl, "PLAYBACK_OTLP_TRACES_URL") {
            var export = TraceExport(url: url)
            switch setting(otlpProtocol, "PLAYBACK_OTLP_PROTOCOL") ?? "protobuf" {
            case "protobuf": export.json = false
            case "json": export.json = true
            case let other: throw ValidationError("unknown OTLP protocol \(other): use protobuf or json")
            }
            export.sampleRatio = try number(traceSampleRatio, "PLAYBACK_TRACE_SAMPLE_RATIO") ?? export.sampleRatio
            do {
                daemon.firstServices.append(try export.bootstrap(logger: logger))
            } catch let error as ConfigurationError {
                throw ValidationError(error.description)
            }
            logger.info("sending traces", metadata: ["otlp.url": .string(url), "trace.sample_ratio": .stringConvertible(export.sampleRatio)])
        }
        let postgresSettings = try postgres.settings()
        let idleTTL = try number(idleTtlMs, "PLAYBACK_IDLE_TTL_MS")
        if let idleTTL {
            guard idleTTL == 0 || idleTTL >= 1_000 else { throw ValidationError("--idle-ttl-ms must be 0 or at least 1000") }
            guard idleTTL == 0 || postgresSettings != nil else {
                throw ValidationError("--idle-ttl-ms needs --postgres-url: without PostgreSQL a user's state would be lost when it leaves Redis")
            }
        }
        if postgresSettings != nil { daemon.server.engine.idleTTLMs = idleTTL ?? 3_600_000 }
        switch setting(catalog, "PLAYBACK_CATALOG") ?? (postgresSettings == nil ? "builtin" : "postgres") {
        case "postgres": daemon.catalogFromPostgres = true
        case "builtin": daemon.catalogFromPostgres = false
        case let other: throw ValidationError("unknown catalog \(other): use postgres or builtin")
        }
        daemon.writeBehind.snapshotIntervalMs = try number(snapshotIntervalMs, "PLAYBACK_SNAPSHOT_INTERVAL_MS") ?? daemon.writeBehind.snapshotIntervalMs
        let configured = daemon
        if postgresSettings != nil {
            try await postgres.withStore(logger: logger) { store in try await serve(configured, store: store, metrics: registry, logger: logger) }
        } else {
            try await serve(configured, store: nil, metrics: registry, logger: logger)
        }
    }

    func serve(_ configuration: DaemonConfiguration, store: PlaybackStore?, metrics: PrometheusCollectorRegistry, logger: Logger) async throws {
        let engineName = if case .redis = configuration.engine { "redis" } else { "memory" }
        let port = configuration.server.port
        let daemon: Daemon
        do {
            daemon = try await buildDaemon(configuration, store: store, metrics: metrics, logger: logger) { channel in
                logger.info("listening", metadata: [
                    "address": .string("\(channel.localAddress?.description ?? "?")"), "engine": .string(engineName),
                    "configured.port": .stringConvertible(port),
                ])
            }
        } catch let error as ConfigurationError {
            throw ValidationError(error.description)
        }
        try await daemon.run()
    }
}
