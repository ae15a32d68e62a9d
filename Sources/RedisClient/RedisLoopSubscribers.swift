import Logging
import NIOCore
import NIOPosix

/// A pub/sub connection per event loop of a group, each a `RedisSubscriber`: a channel is
/// subscribed on the connection of its hash slot's loop (the loop `RedisLoopClients` sends that
/// slot's commands on), so a channel's messages are read on the loop whose commands write them,
/// in order, with no hop between loops.
public final class RedisLoopSubscribers: RedisPubSub {
    private let subscribers: [RedisSubscriber]

    /// `onResubscribed`: the channels of a connection that reconnected (their messages meanwhile are lost).
    public init(
        configuration: RedisConfiguration, group: MultiThreadedEventLoopGroup = .singleton,
        logger: Logger = Logger(label: "playback.redis.pubsub"), onResubscribed: @escaping @Sendable ([String]) -> Void = { _ in },
        onMessage: @escaping RedisSubscriber.MessageHandler
    ) {
        var subscribers: [RedisSubscriber] = []
        for loop in group.makeIterator() {
            subscribers.append(RedisSubscriber(
                configuration: configuration, group: loop, logger: logger, onResubscribed: onResubscribed, onMessage: onMessage))
        }
        if subscribers.isEmpty {
            subscribers = [RedisSubscriber(configuration: configuration, group: group, logger: logger, onResubscribed: onResubscribed, onMessage: onMessage)]
        }
        self.subscribers = subscribers
    }

    /// The subscriber of `channel`'s hash slot, as `RedisLoopClients` picks a connection.
    private func subscriber(of channel: String) -> RedisSubscriber {
        subscribers[RedisClusterClient.slot(of: .string(channel)) % subscribers.count]
    }

    public var isConnected: Bool { subscribers.allSatisfy(\.isConnected) }

    /// The lag of the connection furthest behind.
    public var lagMs: Int64 { subscribers.map(\.lagMs).max() ?? 0 }

    public func subscribe(_ channel: String) async throws {
        try await subscriber(of: channel).subscribe(channel)
    }

    public func unsubscribe(_ channel: String) async throws {
        try await subscriber(of: channel).unsubscribe(channel)
    }

    @discardableResult
    public func waitUntilConnected(timeout: Duration) async -> Bool {
        await withTaskGroup(of: Void.self) { group in
            for subscriber in subscribers { group.addTask { await subscriber.waitUntilConnected(timeout: timeout) } }
        }
        return isConnected
    }

    public func run() async {
        await withDiscardingTaskGroup { group in
            for subscriber in subscribers { group.addTask { await subscriber.run() } }
        }
    }

    public func stop() async {
        for subscriber in subscribers { await subscriber.stop() }
    }
}
