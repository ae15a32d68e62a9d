import Logging
import NIOCore
import PlaybackEngine
import PlaybackStore
import Prometheus
import RedisClient
import ServiceLifecycle

/// What the daemon is made of beyond `ServerConfiguration`: where playback lives and what
/// PostgreSQL (when there is one) does.
public struct DaemonConfiguration: Sendable {
    public enum Engine: Sendable {
        /// Everything in this process.
        case memory
        /// Shared by every daemon on this Redis.
        case redis(RedisConfiguration)
    }

    public var server: ServerConfiguration
    public var engine: Engine = .memory
    /// The catalog from PostgreSQL (refreshed every minute) instead of the built-in demo catalog.
    public var catalogFromPostgres = false
    public var writeBehind = WriteBehind.Limits()
    /// Run before everything else and stopped after it (the trace exporter, which sends the last spans).
    public var firstServices: [any Service] = []

    public init(server: ServerConfiguration) {
        self.server = server
    }
}

/// The daemon: every long-running piece as a service of one `ServiceGroup`, started together and
/// shut down gracefully (SIGTERM, SIGINT) in reverse order: the HTTP server (sessions closed with
/// 1001), the engine (its jobs, then the snapshots), the catalog refresh, the write-behind queue
/// (flushed).
public struct Daemon: Sendable {
    public let engine: any PlaybackEngine
    public let group: ServiceGroup

    public func run() async throws {
        try await group.run()
    }
}

/// Builds the daemon for `configuration` on `store` (running, its migrations applied; nil without
/// PostgreSQL).
public func buildDaemon(
    _ configuration: DaemonConfiguration, store: PlaybackStore?, metrics: PrometheusCollectorRegistry, logger: Logger,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) async throws -> Daemon {
    var services: [any Service] = configuration.firstServices
    var writer: WriteBehind?
    var catalog: any TrackCatalog = DemoCatalog.shared
    if let store {
        let behind = WriteBehind(store: store, limits: configuration.writeBehind, logger: logger)
        writer = behind
        services.append(LoopService("write-behind", loop: { await behind.run() }) {
            let flushed = await behind.flush(timeout: .seconds(5))
            let pending = behind.pending
            logger.info("postgres writes flushed", metadata: [
                "complete": .stringConvertible(flushed), "pending.snapshots": .stringConvertible(pending.snapshots),
                "pending.plays": .stringConvertible(pending.plays),
            ])
        })
        if configuration.catalogFromPostgres {
            let cached: CachedCatalog
            do {
                cached = try await CachedCatalog(store: store)
            } catch {
                throw ConfigurationError(description: "catalog: \(error.description)")
            }
            logger.info("catalog loaded from postgres", metadata: ["catalog.tracks": .stringConvertible(cached.trackCount)])
            services.append(LoopService("catalog refresh", loop: { await cached.refresh(every: .seconds(60), logger: logger) }))
            catalog = cached
        }
    } else if configuration.catalogFromPostgres {
        throw ConfigurationError(description: "the catalog from PostgreSQL needs --postgres-url")
    }
    let durability = Durability(writer: writer, logger: logger)
    ServerMetrics.registerAtStart(withStore: store != nil)
    let engine: any PlaybackEngine
    switch configuration.engine {
    case .memory:
        engine = MemoryEngine(catalog: catalog, configuration: configuration.server.engine, durability: durability, logger: logger)
    case .redis(let redis):
        let redisEngine = RedisEngine(redis: redis, catalog: catalog, configuration: configuration.server.engine, durability: durability, logger: logger)
        logger.info("connecting to redis", metadata: ["redis.url": .string(redis.redacted), "node.id": .string(redisEngine.nodeID)])
        engine = redisEngine
    }
    return try await buildDaemon(
        configuration.server, engine: engine, services: services, metrics: metrics, logger: logger, onServerRunning: onServerRunning)
}

/// Builds the daemon around `engine`, after `services`; SIGTERM and SIGINT shut it down gracefully
/// when it `handlesSignals` (tests bring their own engine and stop it themselves).
public func buildDaemon(
    _ configuration: ServerConfiguration, engine: any PlaybackEngine, services: [any Service] = [],
    handlesSignals: Bool = true, metrics: PrometheusCollectorRegistry?, logger: Logger,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) async throws -> Daemon {
    if configuration.usesDevelopmentSecret {
        logger.warning(
            "NO JWT SECRET CONFIGURED: using the public development secret. Anyone can mint tokens. Set --jwt-secret or PLAYBACK_JWT_SECRET in production.")
    }
    if configuration.diagnosticsEcho { logger.warning("the diagnostics echo is enabled: /v1/diagnostics/echo is open to anyone (test only)") }
    let app = try await buildApplication(configuration, engine: engine, metrics: metrics, logger: logger, onServerRunning: onServerRunning)
    // The engine before the server: the group stops them in reverse order.
    let group = ServiceGroup(configuration: .init(
        services: services + [EngineService(engine), app], gracefulShutdownSignals: handlesSignals ? [.sigterm, .sigint] : [],
        logger: logger))
    return Daemon(engine: engine, group: group)
}
