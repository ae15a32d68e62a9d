import Logging
import NIOCore
import NIOPosix
import Synchronization

/// One Redis connection per event loop (a `RedisClient` on each loop of the group): a command sent
/// from a loop goes out on that loop's connection and its reply comes back on the same loop, so a
/// command and its answer never wake another thread. Callers off the loops (tasks) take the
/// connections in turn.
public final class RedisLoopClients: Sendable {
    private let clients: [RedisClient]
    private let byLoop: [ObjectIdentifier: RedisClient]
    private let next = Atomic<Int>(0)

    public init(configuration: RedisConfiguration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) {
        var clients: [RedisClient] = []
        var byLoop: [ObjectIdentifier: RedisClient] = [:]
        for loop in group.makeIterator() {
            let client = RedisClient(configuration: configuration, group: loop, logger: logger)
            clients.append(client)
            byLoop[ObjectIdentifier(loop)] = client
        }
        if clients.isEmpty { clients = [RedisClient(configuration: configuration, group: group, logger: logger)] }
        self.clients = clients
        self.byLoop = byLoop
    }

    /// The current loop's client, else the next in turn.
    private var client: RedisClient {
        if let loop = MultiThreadedEventLoopGroup.currentEventLoop, let client = byLoop[ObjectIdentifier(loop)] { return client }
        let index = next.add(1, ordering: .relaxed).oldValue
        return clients[(index & Int.max) % clients.count]
    }

    public var configuration: RedisConfiguration { clients[0].configuration }
}

extension RedisLoopClients: RedisCommands {
    public func send(_ arguments: [RedisArgument]) async throws -> RESPValue {
        try await client.send(arguments)
    }

    public func evaluate(_ script: RedisScript, keys: [String], arguments: [RedisArgument]) async throws -> RESPValue {
        try await client.evaluate(script, keys: keys, arguments: arguments)
    }

    public func evaluateFuture(_ script: RedisScript, keys: [String], arguments: [RedisArgument]) -> EventLoopFuture<RESPValue> {
        client.evaluateFuture(script, keys: keys, arguments: arguments)
    }

    public var endpoint: String { configuration.redacted }

    public func shutdown() async {
        for client in clients { await client.shutdown() }
    }
}
