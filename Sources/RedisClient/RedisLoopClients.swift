import Logging
import NIOCore
import NIOPosix
import Synchronization

/// One Redis connection per event loop (a `RedisClient` on each loop of the group). A command goes
/// out on the connection its key's hash slot picks, so all of one user's commands (their keys share
/// a hash tag) keep one connection's order, as with a single connection: a read sent before a
/// write is answered before it. A command sent from the loop of its connection, and its reply,
/// never wake another thread. Commands without a key use the caller's loop's connection, or take
/// them in turn.
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

    /// The client of `key`'s hash slot.
    private func client(for key: RedisArgument) -> RedisClient {
        clients[RedisClusterClient.slot(of: key) % clients.count]
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
        try await (arguments.count > 1 ? client(for: arguments[1]) : client).send(arguments)
    }

    public func evaluate(_ script: RedisScript, keys: [String], arguments: [RedisArgument]) async throws -> RESPValue {
        try await (keys.first.map { client(for: .string($0)) } ?? client).evaluate(script, keys: keys, arguments: arguments)
    }

    public func evaluateFuture(_ script: RedisScript, keys: [String], arguments: [RedisArgument]) -> EventLoopFuture<RESPValue> {
        (keys.first.map { client(for: .string($0)) } ?? client).evaluateFuture(script, keys: keys, arguments: arguments)
    }

    public var endpoint: String { configuration.redacted }

    public func shutdown() async {
        for client in clients { await client.shutdown() }
    }
}
