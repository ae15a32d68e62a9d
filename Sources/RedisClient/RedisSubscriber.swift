import Dispatch
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// A dedicated pub/sub connection. It keeps the set of channels callers want, subscribes them on
/// every (re)connection, and reports messages and reconnections. While it is disconnected,
/// messages are lost; `onResubscribed` tells the caller which channels, so it can catch up (re-read state).
public final class RedisSubscriber: Sendable {
    public typealias MessageHandler = @Sendable (_ channel: String, _ payload: ByteBuffer) -> Void

    private let configuration: RedisConfiguration
    private let group: any EventLoopGroup
    private let logger: Logger
    private let onMessage: MessageHandler
    private let onResubscribed: @Sendable (_ channels: [String]) -> Void

    private struct State {
        var wanted: Set<String> = []
        var connection: RedisConnection?
        var stopped = false
        var connectedWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
    }

    private let state = Mutex(State())

    public init(
        configuration: RedisConfiguration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "playback.redis.pubsub"), onResubscribed: @escaping @Sendable (_ channels: [String]) -> Void = { _ in },
        onMessage: @escaping MessageHandler
    ) {
        self.configuration = configuration
        self.group = group
        self.logger = logger
        self.onMessage = onMessage
        self.onResubscribed = onResubscribed
    }

    public var isConnected: Bool { state.withLock { $0.connection?.isActive == true } }

    /// How far behind the subscription is (a `PING` probe's round trip, every `probeIntervalMs`).
    public let lag = SubscriptionLag()

    /// How often the subscription's lag is probed.
    static let probeIntervalMs: Int64 = 100

    /// Adds a channel; subscribes at once when connected (and waits for Redis to confirm).
    public func subscribe(_ channel: String) async throws {
        let connection = state.withLock { state -> RedisConnection? in
            state.wanted.insert(channel)
            return state.connection
        }
        guard let connection, connection.isActive else { return }
        _ = try await connection.send(["SUBSCRIBE", .string(channel)])
    }

    public func unsubscribe(_ channel: String) async throws {
        let connection = state.withLock { state -> RedisConnection? in
            state.wanted.remove(channel)
            return state.connection
        }
        guard let connection, connection.isActive else { return }
        _ = try await connection.send(["UNSUBSCRIBE", .string(channel)])
    }

    /// Waits until the first subscription round is done, at most `timeout`; true when connected.
    @discardableResult
    public func waitUntilConnected(timeout: Duration = .seconds(5)) async -> Bool {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.connected() }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
        return isConnected
    }

    /// Returns once a subscription round is done, or when the task is cancelled.
    private func connected() async {
        let id = state.withLock { state in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let ready = state.withLock { state -> Bool in
                    if state.connection?.isActive == true || Task.isCancelled { return true }
                    state.connectedWaiters[id] = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.connectedWaiters.removeValue(forKey: id) }?.resume()
        }
    }

    /// Keeps the subscription alive until `stop()` or cancellation (which closes the connection).
    public func run() async {
        await withTaskCancellationHandler {
            await keepSubscribed()
        } onCancel: {
            let connection = state.withLock { state in
                state.stopped = true
                return state.connection
            }
            connection?.channel.close(promise: nil)
        }
    }

    private func keepSubscribed() async {
        var failures = 0
        while !Task.isCancelled, !state.withLock({ $0.stopped }) {
            do {
                let onMessage = self.onMessage
                let connection = try await RedisConnection.connect(configuration, group: group) { push in
                    guard case .array(let parts) = push, parts.count >= 3, let channel = parts[parts.count - 2].string,
                        case .bulkString(let payload) = parts[parts.count - 1]
                    else { return }
                    onMessage(channel, payload)
                }
                let channels = state.withLock { Array($0.wanted) }
                try await Self.subscribe(channels, on: connection)
                let (waiters, stopped) = state.withLock { state in
                    state.connection = connection
                    defer { state.connectedWaiters.removeAll() }
                    return (Array(state.connectedWaiters.values), state.stopped)
                }
                // Stopped while it connected: nobody else will close it.
                if stopped { connection.channel.close(promise: nil) }
                // Channels wanted while the round above ran.
                let missed = state.withLock { $0.wanted.subtracting(channels) }
                try await Self.subscribe(Array(missed), on: connection)
                for waiter in waiters { waiter.resume() }
                if failures > 0 { logger.info("redis pub/sub resubscribed", metadata: ["channels": .stringConvertible(channels.count)]) }
                onResubscribed(channels + missed)
                failures = 0
                try await probe(connection)
            } catch {
                // Stopping (a clean shutdown) ends the connection too: nothing failed then.
                if !Task.isCancelled, !state.withLock({ $0.stopped }) {
                    logger.warning("redis pub/sub connection failed", metadata: ["error": .string("\(error)")])
                }
            }
            lag.reset()
            state.withLock { $0.connection = nil }
            failures += 1
            try? await Task.sleep(for: .milliseconds(Self.backoffMs(failures: failures, cap: configuration.maxBackoffMs)))
        }
    }

    /// Until the connection closes: a `PING` on it every `probeIntervalMs`, its round trip the lag.
    /// A probe without an answer within the command timeout fails the connection (it is replaced,
    /// and the subscriptions' users recover), like any command.
    private func probe(_ connection: RedisConnection) async throws {
        // A failed probe leaves the connection open: closed here, so that only its replacement subscribes.
        defer { connection.channel.close(promise: nil) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await connection.channel.closeFuture.get() }
            group.addTask { [lag] in
                while connection.isActive {
                    lag.sent(atNs: DispatchTime.now().uptimeNanoseconds)
                    _ = try await connection.send(["PING"])
                    lag.answered(atNs: DispatchTime.now().uptimeNanoseconds)
                    try await Task.sleep(for: .milliseconds(Self.probeIntervalMs))
                }
            }
            // Whichever ends first (the connection closed, or a probe failed) ends both.
            _ = try await group.next()
            group.cancelAll()
        }
    }

    /// Subscribes every channel at once, pipelined (thousands of users resubscribe in a few round
    /// trips' time, not one round trip each), and waits for Redis to confirm them all.
    private static func subscribe(_ channels: [String], on connection: RedisConnection) async throws {
        try await withThrowingDiscardingTaskGroup { group in
            for channel in channels {
                group.addTask { _ = try await connection.send(["SUBSCRIBE", .string(channel)]) }
            }
        }
    }

    /// The pause before reconnecting: short, since every moment without the subscription is a moment
    /// of frames missed, and a node that resubscribes late also offers its snapshots late after
    /// Redis lost its data (restores wait for them only so long). Trying a refused connection is cheap.
    static func backoffMs(failures: Int, cap: Int64) -> Int64 {
        min(cap, Self.maxBackoffMs, 50 << min(failures, 10))
    }

    static let maxBackoffMs: Int64 = 250

    public func stop() async {
        let connection = state.withLock { state in
            state.stopped = true
            return state.connection
        }
        await connection?.close()
    }
}
