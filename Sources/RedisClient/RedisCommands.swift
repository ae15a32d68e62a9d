import Dispatch
import NIOCore

/// What the daemon asks of Redis, whether it is one server (`RedisClient`) or a cluster
/// (`RedisClusterClient`, which routes each command by its key's slot).
public protocol RedisCommands: Sendable {
    /// Sends a command; an error reply throws `RedisError(.server, …)`. In a cluster the command
    /// goes to the master of `arguments[1]` (the key of every keyed command the daemon sends);
    /// keyless commands (`PING`) go to any master.
    func send(_ arguments: [RedisArgument]) async throws -> RESPValue

    /// Runs a script by SHA (loading it where it is missing); error replies throw. In a cluster
    /// all `keys` must share a slot, whose master runs it.
    func evaluate(_ script: RedisScript, keys: [String], arguments: [RedisArgument]) async throws -> RESPValue

    /// `evaluate` without a task; the reply comes as is (error replies included).
    func evaluateFuture(_ script: RedisScript, keys: [String], arguments: [RedisArgument]) -> EventLoopFuture<RESPValue>

    /// Where it connects, for logs (no password).
    var endpoint: String { get }

    func shutdown() async
}

/// A pub/sub connection that keeps the channels its caller wants subscribed. In a cluster
/// (`RedisShardedSubscriber`) the channels are shard channels, one connection per master.
public protocol RedisPubSub: Sendable {
    var isConnected: Bool { get }
    /// How far behind the subscription is now, ms (see `SubscriptionLag`).
    var lagMs: Int64 { get }
    func subscribe(_ channel: String) async throws
    func unsubscribe(_ channel: String) async throws
    @discardableResult func waitUntilConnected(timeout: Duration) async -> Bool
    /// Keeps the subscriptions alive until cancelled or stopped.
    func run() async
    func stop() async
}

extension RedisClient: RedisCommands {
    public var endpoint: String { configuration.redacted }
}

extension RedisSubscriber: RedisPubSub {
    public var lagMs: Int64 { lag.ms(nowNs: DispatchTime.now().uptimeNanoseconds) }
}
