import Logging
import NIOCore
import NIOPosix
import Synchronization

/// A Redis client: one multiplexed, pipelined connection, re-established with backoff after it
/// drops. While Redis is unreachable, commands fail fast with `.unavailable` instead of waiting.
/// Commands are never retried here (a write may or may not have happened); callers decide.
public final class RedisClient: Sendable {
    public let configuration: RedisConfiguration
    private let group: any EventLoopGroup
    private let logger: Logger

    private struct State {
        var connection: RedisConnection?
        /// The connect in progress, shared by every caller that needs a connection meanwhile.
        var connecting: EventLoopFuture<RedisConnection>?
        var failures = 0
        var retryAfter: ContinuousClock.Instant?
        var closed = false
    }

    private let state = Mutex(State())

    public init(
        configuration: RedisConfiguration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "playback.redis")
    ) {
        self.configuration = configuration
        self.group = group
        self.logger = logger
    }

    public func send(_ arguments: [RedisArgument]) async throws -> RESPValue {
        try await connection().send(arguments)
    }

    /// Sends a command without a task; the reply comes as is (error replies included).
    public func sendRawFuture(_ arguments: [RedisArgument]) -> EventLoopFuture<RESPValue> {
        if let connection = connectedConnection { return connection.sendRawFuture(arguments) }
        return connectionFuture().flatMap { $0.sendRawFuture(arguments) }
    }

    /// Runs a Lua script by its SHA, loading it first (and again after NOSCRIPT, e.g. when
    /// Redis restarted or its script cache was flushed). Error replies throw.
    public func evaluate(_ script: RedisScript, keys: [String], arguments: [RedisArgument]) async throws -> RESPValue {
        let reply = try await evaluate(script, keys: keys, arguments: arguments, on: try await connection()).get()
        if case .error(let message) = reply { throw RedisError(.server, message) }
        return reply
    }

    /// `evaluate` without a task, for callers that continue in the reply's callback; the reply
    /// comes as is (error replies included).
    public func evaluateFuture(_ script: RedisScript, keys: [String], arguments: [RedisArgument]) -> EventLoopFuture<RESPValue> {
        if let connection = connectedConnection { return evaluate(script, keys: keys, arguments: arguments, on: connection) }
        return connectionFuture().flatMap { self.evaluate(script, keys: keys, arguments: arguments, on: $0) }
    }

    private func evaluate(
        _ script: RedisScript, keys: [String], arguments: [RedisArgument], on connection: RedisConnection
    ) -> EventLoopFuture<RESPValue> {
        var tail: [RedisArgument] = [.integer(Int64(keys.count))]
        tail.reserveCapacity(1 + keys.count + arguments.count)
        for key in keys { tail.append(.string(key)) }
        tail.append(contentsOf: arguments)
        let arguments = tail
        let loop = connection.channel.eventLoop
        let run: @Sendable (String) -> EventLoopFuture<RESPValue> = { sha in connection.sendRawFuture(["EVALSHA", .string(sha)] + arguments) }
        // After a load: flushed again meanwhile (a restart, `SCRIPT FLUSH`), the source itself.
        let runLoaded: @Sendable (String) -> EventLoopFuture<RESPValue> = { sha in
            run(sha).flatMap { reply in
                guard Self.isNoScript(reply) else { return loop.makeSucceededFuture(reply) }
                return connection.sendRawFuture(["EVAL", .string(script.source)] + arguments)
            }
        }
        guard let sha = script.sha else { return script.load(on: connection).flatMap(runLoaded) }
        return run(sha).flatMap { reply in
            guard Self.isNoScript(reply) else { return loop.makeSucceededFuture(reply) }
            script.forget(sha: sha)
            return script.load(on: connection).flatMap(runLoaded)
        }
    }

    private static func isNoScript(_ reply: RESPValue) -> Bool {
        if case .error(let message) = reply { return message.hasPrefix("NOSCRIPT") }
        return false
    }

    /// The connection when one is up, without waiting.
    private var connectedConnection: RedisConnection? {
        state.withLock { state in
            guard !state.closed, let connection = state.connection, connection.isActive else { return nil }
            return connection
        }
    }

    /// The current connection, connecting (once, for all callers) when there is none.
    public func connection() async throws -> RedisConnection {
        if let connection = connectedConnection { return connection }
        return try await connectionFuture().get()
    }

    /// The current connection as a future: connected, or the connect in progress (one for all
    /// callers), or a new one; fails fast while backing off after a failed connect.
    func connectionFuture() -> EventLoopFuture<RedisConnection> {
        let loop = group.any()
        let decision: Result<(future: EventLoopFuture<RedisConnection>, started: Bool), RedisError> = state.withLock { state in
            if state.closed { return .failure(RedisError(.unavailable, "the client is shut down")) }
            if let connection = state.connection, connection.isActive { return .success((loop.makeSucceededFuture(connection), false)) }
            if let connecting = state.connecting { return .success((connecting, false)) }
            if let retryAfter = state.retryAfter, ContinuousClock.now < retryAfter {
                return .failure(RedisError(.unavailable, "Redis at \(configuration.host):\(configuration.port) is unreachable; retrying"))
            }
            let connecting = RedisConnection.connectFuture(configuration, group: group)
            state.connection = nil
            state.connecting = connecting
            return .success((connecting, true))
        }
        switch decision {
        case .success(let (future, started)):
            // Outside the lock: the callback may run at once.
            if started { future.whenComplete { self.connected($0) } }
            return future
        case .failure(let error):
            return loop.makeFailedFuture(error)
        }
    }

    private func connected(_ result: Result<RedisConnection, any Error>) {
        switch result {
        case .success(let connection):
            let (recovered, closed) = state.withLock { state -> (Bool, Bool) in
                defer {
                    state.connection = connection
                    state.connecting = nil
                    state.failures = 0
                    state.retryAfter = nil
                }
                return (state.failures > 0, state.closed)
            }
            if closed {
                // Shut down while it connected.
                connection.channel.close(promise: nil)
                return
            }
            if recovered { logger.info("redis reconnected", metadata: ["redis.host": .string(configuration.host)]) }
        case .failure(let error):
            state.withLock { state in
                state.connecting = nil
                state.failures += 1
                let backoff = min(configuration.maxBackoffMs, 50 << min(state.failures, 10))
                state.retryAfter = ContinuousClock.now + .milliseconds(backoff)
            }
            logger.warning("redis unreachable", metadata: ["error": .string("\(error)")])
        }
    }

    public func shutdown() async {
        let connection = state.withLock { state in
            state.closed = true
            return state.connection
        }
        await connection?.close()
    }
}

/// A Lua script, loaded once per Redis and run by SHA. Callers that find it not loaded share one
/// `SCRIPT LOAD` (a daemon starting under load would otherwise send one per command in flight).
public final class RedisScript: Sendable {
    public let source: String

    private struct State {
        var sha: String?
        var loading: EventLoopFuture<String>?
    }

    private let state = Mutex(State())

    public init(_ source: String) { self.source = source }

    var sha: String? { state.withLock { $0.sha } }

    /// Loads the script on `connection`, or joins the load already on its way.
    func load(on connection: RedisConnection) -> EventLoopFuture<String> {
        let (future, started) = state.withLock { state -> (EventLoopFuture<String>, Bool) in
            if let loading = state.loading { return (loading, false) }
            let loading = connection.sendRawFuture(["SCRIPT", "LOAD", .string(source)]).flatMapThrowing { reply -> String in
                guard let sha = reply.string, !sha.isEmpty else { throw RedisError(.protocolError, "SCRIPT LOAD returned no SHA: \(reply)") }
                return sha
            }
            state.loading = loading
            return (loading, true)
        }
        if started {
            future.whenComplete { [self] result in
                state.withLock { state in
                    state.loading = nil
                    if case .success(let sha) = result { state.sha = sha }
                }
            }
        }
        return future
    }

    /// Redis lost the script (a restart, `SCRIPT FLUSH`): the next call loads it again.
    func forget(sha: String) {
        state.withLock { state in if state.sha == sha { state.sha = nil } }
    }
}
