import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Hummingbird
import Logging
import Metrics
import NIOCore
import PlaybackEngine
import Prometheus
import RedisClient
import ServiceLifecycle
import SyncServer
import Synchronization
import Testing

/// One Prometheus registry for the whole test process (MetricsSystem is bootstrapped once).
enum TestMetrics {
    static let registry: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return registry
    }()

    static func text() -> String {
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The value of one series, e.g. `playback_ws_closes_total{code="4008"}` (0 when absent).
    static func value(_ series: String) -> Double {
        for line in text().split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1)) ?? 0
        }
        return 0
    }
}

/// Which engine a test server runs.
enum EngineKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case memory, redis

    var testDescription: String { rawValue }

    /// The redis-server scripts/test starts.
    static let redisURL = ProcessInfo.processInfo.environment["PLAYBACK_REDIS_URL"] ?? "redis://127.0.0.1:6390/0"
}

/// The daemon running in-process on a free port, for one test.
final class TestServer: Sendable {
    let port: Int
    let configuration: ServerConfiguration
    /// Appended to user names, so that tests sharing one Redis never share a user.
    let namespace: String
    let engine: any PlaybackEngine
    /// What this server logged, when started with `recordingLogs` (evidence of this test alone:
    /// the metrics registry is the whole process's, shared with every test running at once).
    let logs: LogRecorder
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    private init(
        port: Int, configuration: ServerConfiguration, namespace: String, engine: any PlaybackEngine, logs: LogRecorder, group: ServiceGroup,
        task: Task<Void, any Error>
    ) {
        self.port = port
        self.logs = logs
        self.configuration = configuration
        self.namespace = namespace
        self.engine = engine
        self.group = group
        self.task = task
    }

    /// Tightened defaults so that timing-based behaviour is observable quickly.
    static func fastConfiguration() -> ServerConfiguration {
        var configuration = ServerConfiguration()
        configuration.port = 0
        configuration.engine.graceMs = 300
        // The suites run in parallel on two cores: a starved event loop must not turn a test's
        // command into an overload refusal (OverloadTests sets a bound of its own).
        configuration.engine.maxBusLagMs = 0
        configuration.closeTimeoutMs = 300
        return configuration
    }

    static func start(
        engine kind: EngineKind = .memory, namespace: String = String(UInt32.random(in: 0...UInt32.max), radix: 36),
        durability: Durability? = nil, catalog: (any TrackCatalog)? = nil, redisURL: String? = nil, recordingLogs: Bool = false,
        _ configure: (inout ServerConfiguration) -> Void = { _ in }
    ) async throws -> TestServer {
        _ = TestMetrics.registry
        var configuration = fastConfiguration()
        configure(&configuration)

        let (ports, portContinuation) = AsyncStream<Int>.makeStream()
        let printed = ProcessInfo.processInfo.environment["TEST_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) } ?? .critical
        let logs = LogRecorder(printing: printed)
        var logger = Logger(label: "test-server") { label in
            recordingLogs ? logs.handler : StreamLogHandler.standardError(label: label)
        }
        logger.logLevel = recordingLogs ? .debug : printed
        let engine: any PlaybackEngine
        switch kind {
        case .memory:
            engine = MemoryEngine(
                catalog: catalog ?? DemoCatalog.shared, configuration: configuration.engine, durability: durability, logger: logger)
        case .redis:
            // The suites run in parallel on two cores: a reply may take seconds at the start of a
            // run, which is not what they test (a dropped connection is still noticed at once).
            var redisConfiguration = try RedisConfiguration(url: redisURL ?? EngineKind.redisURL)
            redisConfiguration.commandTimeoutMs = 10_000
            engine = RedisEngine(
                redis: redisConfiguration, catalog: catalog ?? DemoCatalog.shared,
                configuration: configuration.engine, durability: durability, logger: logger)
        }
        // Built as the daemon builds itself, around the test's engine; the test stops it.
        let daemon = try await buildDaemon(configuration, engine: engine, handlesSignals: false, metrics: TestMetrics.registry, logger: logger) { channel in
            portContinuation.yield(channel.localAddress?.port ?? 0)
            portContinuation.finish()
        }
        let group = daemon.group
        let task = Task { try await group.run() }
        if let redis = engine as? RedisEngine { await redis.waitUntilReady() }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next(), port > 0 else { throw TestTimeout(waitingFor: "the server to listen") }
        return TestServer(
            port: port, configuration: configuration, namespace: namespace, engine: engine, logs: logs, group: group, task: task)
    }

    func connect(_ user: String = "alice", ttl: TimeInterval = 3_600, country: String? = nil, origin: String? = nil,
                 receiveBuffer: Int? = nil, autoRead: Bool = true, answerPings: Bool = true) async throws -> TestClient {
        try await TestClient.connect(
            port: port, token: try await token(user, ttl: ttl, country: country), origin: origin,
            receiveBuffer: receiveBuffer, autoRead: autoRead, answerPings: answerPings)
    }

    /// A connected device that has said hello.
    func device(_ id: String, user: String = "alice", kind: DeviceKind = .smartphone, capabilities: [String]? = nil)
        async throws -> (TestClient, ServerMessage.Welcome)
    {
        let client = try await connect(user)
        let welcome = try await client.hello(id, kind: kind, capabilities: capabilities)
        return (client, welcome)
    }

    func token(_ user: String, ttl: TimeInterval = 3_600, country: String? = nil, secret: String? = nil) async throws -> String {
        let authenticator = await Authenticator(secret: secret ?? configuration.jwtSecret, allowedOrigins: [])
        return try await authenticator.sign(AccessToken(user: "\(user).\(namespace)", expires: Date().addingTimeInterval(ttl), country: country))
    }

    /// A token for alice that expires at `expiry`, however absurd.
    func token(expiringAt expiry: Date) async throws -> String {
        let authenticator = await Authenticator(secret: configuration.jwtSecret, allowedOrigins: [])
        return try await authenticator.sign(AccessToken(user: "alice.\(namespace)", expires: expiry))
    }

    /// Shuts down gracefully, as on SIGTERM: sessions are closed with 1001.
    func stop() async {
        await group.triggerGracefulShutdown()
        _ = await task.result
        await engine.shutdown()
    }

    /// Runs `body` against a fresh server and stops it afterwards.
    static func with<T>(
        engine: EngineKind = .memory, recordingLogs: Bool = false, _ configure: (inout ServerConfiguration) -> Void = { _ in },
        _ body: (TestServer) async throws -> T
    ) async throws -> T {
        let server = try await start(engine: engine, recordingLogs: recordingLogs, configure)
        do {
            let result = try await body(server)
            await server.stop()
            return result
        } catch {
            await server.stop()
            throw error
        }
    }

    /// A plain HTTP request to the server.
    func http(_ path: String, method: String = "GET", headers: [String: String] = [:], body: String? = nil) async throws
        -> (status: Int, body: String)
    {
        let response = try await httpResponse(path, method: method, headers: headers, body: body)
        return (response.status, response.body)
    }

    func httpResponse(_ path: String, method: String = "GET", headers: [String: String] = [:], body: String? = nil) async throws
        -> (status: Int, body: String, headers: [String: String])
    {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(path)")!)
        request.httpMethod = method
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        request.httpBody = body.map { Data($0.utf8) }
        let (data, response) = try await URLSession.shared.data(for: request)
        let http = response as? HTTPURLResponse
        var fields: [String: String] = [:]
        for (name, value) in http?.allHeaderFields ?? [:] { fields[String(describing: name).lowercased()] = String(describing: value) }
        return (http?.statusCode ?? 0, String(decoding: data, as: UTF8.self), fields)
    }
}
