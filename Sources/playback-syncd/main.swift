import ArgumentParser
import Foundation
import Hummingbird
import Logging
import Metrics
import PlaybackEngine
import PlaybackStore
import Prometheus
import RedisClient
import ServiceLifecycle
import SyncServer

/// `playback-syncd`: runs the server (`serve`, the default) until SIGTERM/SIGINT (sessions are
/// closed with 1001), or manages its PostgreSQL database (`migrate`, `seed-catalog`).
@main
struct PlaybackSyncd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "playback-syncd",
        abstract: "Real-time playback sync daemon: one active device per user, every change on every device.",
        discussion: "Every option can also be set with the environment variable shown in its help; the flag wins.",
        version: "0.3.0",
        subcommands: [Serve.self, Migrate.self, SeedCatalog.self],
        defaultSubcommand: Serve.self)
}

/// Reads a flag, else an environment variable (empty counts as unset).
func setting(_ flag: String?, _ name: String) -> String? {
    flag ?? ProcessInfo.processInfo.environment[name].flatMap { $0.isEmpty ? nil : $0 }
}

func number<T: LosslessStringConvertible>(_ flag: T?, _ name: String) throws -> T? {
    if let flag { return flag }
    guard let text = setting(nil, name) else { return nil }
    guard let value = T(text) else { throw ValidationError("\(name)=\(text) is not a valid number") }
    return value
}

func bootstrapLogging(_ requested: String?) throws {
    let level = setting(requested, "PLAYBACK_LOG_LEVEL").map { Logger.Level(rawValue: $0.lowercased()) } ?? .info
    guard let level else { throw ValidationError("unknown log level") }
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
}

/// Options shared by the commands that talk to PostgreSQL.
struct PostgresOptions: ParsableArguments {
    @Option(help: "PostgreSQL: postgres://user[:password]@host[:port]/database[?sslmode=disable|prefer|require]. Enables the catalog, licensing, snapshots and play history from it. [PLAYBACK_POSTGRES_URL, default: none]")
    var postgresUrl: String?

    func settings() throws -> PostgresSettings? {
        guard let url = setting(postgresUrl, "PLAYBACK_POSTGRES_URL") else { return nil }
        do {
            return try PostgresSettings(url: url)
        } catch {
            throw ValidationError(error.description)
        }
    }

    /// Runs `body` with a store whose migrations are applied; its connection pool runs beside
    /// `body` (in a task group of its own) and stops when `body` returns.
    func withStore<T: Sendable>(logger: Logger, _ body: (PlaybackStore) async throws -> T) async throws -> T {
        guard let settings = try settings() else { throw ValidationError("set --postgres-url or PLAYBACK_POSTGRES_URL") }
        let store = PlaybackStore(settings: settings, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { pool in
            pool.addTask { await store.run() }
            defer { pool.cancelAll() }
            do {
                let applied = try await store.migrate()
                logger.info("postgres ready", metadata: [
                    "postgres.url": .string(settings.redacted), "migrations.applied": .string(applied.map(String.init).joined(separator: ",")),
                ])
            } catch {
                throw ValidationError("PostgreSQL at \(settings.redacted): \(error)")
            }
            return try await body(store)
        }
    }
}

/// `playback-syncd migrate`: applies the schema migrations and exits.
struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply the PostgreSQL schema migrations (the daemon also does at start).")
    @OptionGroup var postgres: PostgresOptions
    @Option(help: "Log level. [PLAYBACK_LOG_LEVEL, default info]") var logLevel: String?

    func run() async throws {
        try bootstrapLogging(logLevel)
        try await postgres.withStore(logger: Logger(label: "playback-syncd")) { _ in }
    }
}

/// `playback-syncd seed-catalog`: loads the deterministic demo catalog into PostgreSQL.
struct SeedCatalog: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load the deterministic demo catalog into PostgreSQL (replacing the catalog tables).",
        discussion: "Tracks t0001…, albums of ten (a01…), playlists p1…p5; every 50th track from t0013 is licensed only in SE and NO. The first 300 tracks are the built-in catalog's.")
    @OptionGroup var postgres: PostgresOptions
    @Option(help: "How many tracks.") var tracks = 10_000
    @Flag(help: "Do nothing when the tracks table already has tracks.") var ifEmpty = false
    @Option(help: "Log level. [PLAYBACK_LOG_LEVEL, default info]") var logLevel: String?

    func run() async throws {
        try bootstrapLogging(logLevel)
        let logger = Logger(label: "playback-syncd")
        guard tracks > 0 else { throw ValidationError("--tracks must be positive") }
        let tracks = self.tracks
        let ifEmpty = self.ifEmpty
        try await postgres.withStore(logger: logger) { store in
            if ifEmpty, let existing = try? await store.loadCatalog(), !existing.tracksByID.isEmpty {
                print("catalog already has \(existing.tracksByID.count) tracks; left as it is")
                return
            }
            let catalog = DemoCatalog.make(trackCount: tracks)
            var albums: [String: String] = [:]
            for number in 1...tracks { albums[DemoCatalog.trackID(number)] = DemoCatalog.albumID(ofTrack: number) }
            do {
                try await store.replaceCatalog(catalog, albums: albums)
            } catch {
                throw ValidationError("seeding failed: \(error)")
            }
            print("catalog seeded: \(catalog.tracksByID.count) tracks, \(catalog.contexts.count) contexts, \(catalog.restrictions.count) region-restricted")
        }
    }
}

/// `playback-syncd serve` (the default): the daemon.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon (the default command).",
        discussion: "Every option can also be set with the environment variable shown in its help; the flag wins.")

    @Option(help: "Address to listen on. [PLAYBACK_HOST, default 127.0.0.1]")
    var host: String?
    @Option(help: "Port to listen on (0 picks one). [PLAYBACK_PORT, default 8080]")
    var port: Int?
    @Option(help: "HS256 secret for access tokens, at least 32 bytes. [PLAYBACK_JWT_SECRET, default: the public development secret, on loopback only]")
    var jwtSecret: String?
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
    @Flag(help: "Test only: serve an unauthenticated echo at /v1/diagnostics/echo on the same WebSocket pipeline, for conformance suites.")
    var diagnosticsEcho = false
    @Flag(help: "Offer permessage-deflate (RFC 7692, no context takeover: a broadcast is compressed once for all). [PLAYBACK_PERMESSAGE_DEFLATE=1]")
    var permessageDeflate = false
    @Option(help: "PEM certificate chain: serve wss:// and https:// (with --tls-key). [PLAYBACK_TLS_CERT]")
    var tlsCert: String?
    @Option(help: "PEM private key for --tls-cert. [PLAYBACK_TLS_KEY]")
    var tlsKey: String?
    @OptionGroup var postgres: PostgresOptions
    @Option(help: "Where tracks come from: postgres (the tracks tables, cached in memory) or builtin (300 demo tracks). [PLAYBACK_CATALOG, default postgres when --postgres-url is set]")
    var catalog: String?
    @Option(help: "Least time between two snapshots of one user's playback in PostgreSQL, ms (lease changes are written at once). [PLAYBACK_SNAPSHOT_INTERVAL_MS, default 1000]")
    var snapshotIntervalMs: Int64?

    func run() async throws {
        try bootstrapLogging(logLevel)
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
        config.engine.graceMs = try number(graceMs, "PLAYBACK_GRACE_MS") ?? config.engine.graceMs
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
        if diagnosticsEcho { logger.warning("the diagnostics echo is enabled: /v1/diagnostics/echo is open to anyone (test only)") }
        let engineName = setting(engine, "PLAYBACK_ENGINE") ?? "memory"

        let postgresSettings = try postgres.settings()
        let catalogName = setting(catalog, "PLAYBACK_CATALOG") ?? (postgresSettings == nil ? "builtin" : "postgres")
        guard ["postgres", "builtin"].contains(catalogName) else { throw ValidationError("unknown catalog \(catalogName): use postgres or builtin") }
        if postgresSettings != nil {
            try await postgres.withStore(logger: logger) { store in
                try await serve(config, engineName: engineName, catalogName: catalogName, store: store, metrics: registry, logger: logger)
            }
        } else {
            guard catalogName != "postgres" else { throw ValidationError("--catalog postgres needs --postgres-url") }
            try await serve(config, engineName: engineName, catalogName: catalogName, store: nil, metrics: registry, logger: logger)
        }
    }

    /// Every long-running piece as a service of one group, shut down gracefully on SIGTERM or
    /// SIGINT in reverse order: the HTTP server (sessions closed with 1001), the engine (its jobs,
    /// then the snapshots), the catalog refresh, the write-behind queue (flushed). PostgreSQL's
    /// pool runs around the group (`withStore`).
    func serve(
        _ config: ServerConfiguration, engineName: String, catalogName: String, store: PlaybackStore?,
        metrics: PrometheusCollectorRegistry, logger: Logger
    ) async throws {
        var services: [any Service] = []
        var writer: WriteBehind?
        var trackCatalog: any TrackCatalog = DemoCatalog.shared
        if let store {
            var limits = WriteBehind.Limits()
            limits.snapshotIntervalMs = try number(snapshotIntervalMs, "PLAYBACK_SNAPSHOT_INTERVAL_MS") ?? limits.snapshotIntervalMs
            let behind = WriteBehind(store: store, limits: limits, logger: logger)
            writer = behind
            services.append(LoopService("write-behind", loop: { await behind.run() }) {
                let flushed = await behind.flush(timeout: .seconds(5))
                let pending = behind.pending
                logger.info("postgres writes flushed", metadata: [
                    "complete": .stringConvertible(flushed), "pending.snapshots": .stringConvertible(pending.snapshots),
                    "pending.plays": .stringConvertible(pending.plays),
                ])
            })
            if catalogName == "postgres" {
                let cached: CachedCatalog
                do {
                    cached = try await CachedCatalog(store: store)
                } catch {
                    throw ValidationError("catalog: \(error.description)")
                }
                logger.info("catalog loaded from postgres", metadata: ["catalog.tracks": .stringConvertible(cached.trackCount)])
                services.append(LoopService("catalog refresh", loop: { await cached.refresh(every: .seconds(60), logger: logger) }))
                trackCatalog = cached
            }
        }
        let durability = Durability(writer: writer, logger: logger)

        let playbackEngine: any PlaybackEngine
        switch engineName {
        case "memory":
            playbackEngine = MemoryEngine(catalog: trackCatalog, configuration: config.engine, durability: durability, logger: logger)
        case "redis":
            let url = setting(redisUrl, "PLAYBACK_REDIS_URL") ?? "redis://127.0.0.1:6379/0"
            var redisConfiguration = try RedisConfiguration(url: url)
            if let timeout = try number(redisTimeoutMs, "PLAYBACK_REDIS_TIMEOUT_MS") {
                guard timeout > 0 else { throw ValidationError("--redis-timeout-ms must be positive") }
                redisConfiguration.commandTimeoutMs = timeout
                redisConfiguration.connectTimeoutMs = timeout
            }
            let redis = RedisEngine(
                redis: redisConfiguration, catalog: trackCatalog, configuration: config.engine,
                durability: durability, logger: logger)
            logger.info("connecting to redis", metadata: ["redis.url": .string(redisConfiguration.redacted), "node.id": .string(redis.nodeID)])
            playbackEngine = redis
        default:
            throw ValidationError("unknown engine \(engineName): use memory or redis")
        }
        services.append(EngineService(playbackEngine))

        if config.usesDevelopmentSecret {
            logger.warning(
                "NO JWT SECRET CONFIGURED: using the public development secret. Anyone can mint tokens. Set --jwt-secret or PLAYBACK_JWT_SECRET in production.")
        }
        let port = config.port
        services.append(try await buildApplication(config, engine: playbackEngine, metrics: metrics, logger: logger) { channel in
            logger.info(
                "listening", metadata: [
                    "address": .string("\(channel.localAddress?.description ?? "?")"), "engine": .string(engineName),
                    "configured.port": .stringConvertible(port),
                ])
        })
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
