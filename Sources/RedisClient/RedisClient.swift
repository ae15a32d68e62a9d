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
    /// For a client of one event loop (`RedisLoopClients`): the connection as that loop last saw it
    /// up, read there without the lock (every command of the loop's users reads it).
    private let loopConnection: (loop: any EventLoop, box: NIOLoopBoundBox<RedisConnection?>)?

    public init(
        configuration: RedisConfiguration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "playback.redis")
    ) {
        self.configuration = configuration
        self.group = group
        self.logger = logger
        loopConnection = (group as? any EventLoop).map { ($0, NIOLoopBoundBox.makeEmptyBox(valueType: RedisConnection.self, eventLoop: $0)) }
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
        return run(script.sha).flatMap { reply in
            guard Self.isNoScript(reply) else { return loop.makeSucceededFuture(reply) }
            return script.load(on: connection).flatMap(runLoaded)
        }
    }

    private static func isNoScript(_ reply: RESPValue) -> Bool {
        if case .error(let message) = reply { return message.hasPrefix("NOSCRIPT") }
        return false
    }

    /// The connection when one is up, without waiting.
    private var connectedConnection: RedisConnection? {
        let bound = loopConnection.flatMap { $0.loop.inEventLoop ? $0.box : nil }
        if let bound, let connection = bound.value, connection.isActive { return connection }
        let connection = state.withLock { state -> RedisConnection? in
            guard !state.closed, let connection = state.connection, connection.isActive else { return nil }
            return connection
        }
        bound?.value = connection
        return connection
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

/// A Lua script, run by its SHA-1, which is known without asking Redis (`EVALSHA` needs no state
/// of the client, so a command reads no lock for it). Where Redis does not have it (`NOSCRIPT`: a
/// new or restarted Redis, `SCRIPT FLUSH`), callers share one `SCRIPT LOAD` (a daemon starting
/// under load would otherwise send one per command in flight).
public final class RedisScript: Sendable {
    public let source: String
    /// The SHA-1 of `source`, hex: the name Redis gives the script.
    public let sha: String

    private let loading = Mutex<EventLoopFuture<String>?>(nil)

    public init(_ source: String) {
        self.source = source
        sha = SHA1.hex(Array(source.utf8))
    }

    /// Loads the script on `connection`, or joins the load already on its way.
    func load(on connection: RedisConnection) -> EventLoopFuture<String> {
        let (future, started) = loading.withLock { loading -> (EventLoopFuture<String>, Bool) in
            if let loading { return (loading, false) }
            let load = connection.sendRawFuture(["SCRIPT", "LOAD", .string(source)]).flatMapThrowing { reply -> String in
                guard let sha = reply.string, !sha.isEmpty else { throw RedisError(.protocolError, "SCRIPT LOAD returned no SHA: \(reply)") }
                return sha
            }
            loading = load
            return (load, true)
        }
        if started {
            future.whenComplete { [self] _ in loading.withLock { $0 = nil } }
        }
        return future
    }
}

/// SHA-1 (FIPS 180-4), for the names Redis gives scripts; nothing here relies on it for security.
enum SHA1 {
    static func hex(_ message: [UInt8]) -> String {
        var h: (UInt32, UInt32, UInt32, UInt32, UInt32) = (0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0)
        var data = message
        data.append(0x80)
        while data.count % 64 != 56 { data.append(0) }
        let bits = UInt64(message.count) * 8
        for shift in stride(from: 56, through: 0, by: -8) { data.append(UInt8(truncatingIfNeeded: bits >> UInt64(shift))) }
        var w = [UInt32](repeating: 0, count: 80)
        for chunk in stride(from: 0, to: data.count, by: 64) {
            for i in 0..<16 {
                let at = chunk + 4 * i
                w[i] = UInt32(data[at]) << 24 | UInt32(data[at + 1]) << 16 | UInt32(data[at + 2]) << 8 | UInt32(data[at + 3])
            }
            for i in 16..<80 { w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotatedLeft(1) }
            var (a, b, c, d, e) = h
            for i in 0..<80 {
                let (f, k): (UInt32, UInt32) =
                    switch i {
                    case 0..<20: ((b & c) | (~b & d), 0x5A82_7999)
                    case 20..<40: (b ^ c ^ d, 0x6ED9_EBA1)
                    case 40..<60: ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC)
                    default: (b ^ c ^ d, 0xCA62_C1D6)
                    }
                let temp = a.rotatedLeft(5) &+ f &+ e &+ k &+ w[i]
                (e, d, c, b, a) = (d, c, b.rotatedLeft(30), a, temp)
            }
            h = (h.0 &+ a, h.1 &+ b, h.2 &+ c, h.3 &+ d, h.4 &+ e)
        }
        return [h.0, h.1, h.2, h.3, h.4].map { word in
            let text = String(word, radix: 16)
            return String(repeating: "0", count: 8 - text.count) + text
        }.joined()
    }
}

extension UInt32 {
    fileprivate func rotatedLeft(_ count: UInt32) -> UInt32 { self << count | self >> (32 - count) }
}
