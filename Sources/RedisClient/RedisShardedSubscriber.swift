import Dispatch
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// Sharded pub/sub on a Redis Cluster: each channel `SSUBSCRIBE`d at the master that owns its
/// slot (one connection per master), where `SPUBLISH` sends it (plain `PUBLISH` would reach every
/// node of the cluster).
///
/// A subscription ends without the caller asking when its slot moves (a migration, a failover:
/// Redis then pushes `sunsubscribe`) or when the master's connection drops. Either way the
/// channel is subscribed again where the slot lives now, and `onResubscribed` names the channels
/// whose messages may have been missed meanwhile, so the caller can catch up.
public final class RedisShardedSubscriber: RedisPubSub {
    public typealias MessageHandler = @Sendable (_ channel: String, _ payload: ByteBuffer) -> Void

    private let cluster: RedisClusterClient
    private let configuration: RedisConfiguration
    private let group: any EventLoopGroup
    private let logger: Logger
    private let onMessage: MessageHandler
    private let onResubscribed: @Sendable ([String]) -> Void

    /// How often the subscriptions are checked against the slot map when nothing else asks.
    static let checkIntervalMs: Int64 = 500

    private struct State {
        var wanted: Set<String> = []
        /// Where each channel is subscribed now.
        var subscribedAt: [String: RedisNodeAddress] = [:]
        var links: [RedisNodeAddress: RedisConnection] = [:]
        /// Channels whose subscription ended without the caller asking: messages may be missed.
        var lost: Set<String> = []
        var mapRead = false
        var refreshMap = false
        var stopped = false
        var wake: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    /// `cluster` tells where the slots are; `configuration` (credentials, client name, timeouts)
    /// is that of the subscriber's own connections (the cluster's, when nil).
    public init(
        cluster: RedisClusterClient, configuration: RedisConfiguration? = nil, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "playback.redis.pubsub"), onResubscribed: @escaping @Sendable ([String]) -> Void = { _ in },
        onMessage: @escaping MessageHandler
    ) {
        self.cluster = cluster
        self.configuration = configuration ?? cluster.configuration
        self.group = group
        self.logger = logger
        self.onMessage = onMessage
        self.onResubscribed = onResubscribed
    }

    /// True while the slot map is readable (some masters may still be failing over).
    public var isConnected: Bool { state.withLock { $0.mapRead } }

    /// How many channels are subscribed, and at how many masters (for tests and logs).
    public var subscriptions: (channels: Int, masters: Int) {
        state.withLock { state in (state.subscribedAt.count, Set(state.subscribedAt.values).count) }
    }

    /// Adds a channel and subscribes it at its master, waiting for Redis to confirm. When that
    /// cannot be done at once (no connection to the master yet, a moved slot), the next round
    /// subscribes it and reports it through `onResubscribed`, since messages may be missed until then.
    public func subscribe(_ channel: String) async throws {
        state.withLock { _ = $0.wanted.insert(channel) }
        if let owner = cluster.topology?.master(of: channel), let link = try? await link(to: owner),
            (try? await subscribe([channel], at: owner, on: link)) != nil
        {
            return
        }
        state.withLock { state in
            if state.wanted.contains(channel), state.subscribedAt[channel] == nil { state.lost.insert(channel) }
        }
        wake()
    }

    public func unsubscribe(_ channel: String) async throws {
        let (address, link) = state.withLock { state -> (RedisNodeAddress?, RedisConnection?) in
            state.wanted.remove(channel)
            state.lost.remove(channel)
            guard let address = state.subscribedAt.removeValue(forKey: channel) else { return (nil, nil) }
            return (address, state.links[address])
        }
        guard address != nil, let link, link.isActive else { return }
        // Redis answers with a push (see `RedisRequest.expectsReply`).
        try await link.sendWithoutReply(["SUNSUBSCRIBE", .string(channel)]).get()
    }

    @discardableResult
    public func waitUntilConnected(timeout: Duration = .seconds(5)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while !isConnected, ContinuousClock.now < deadline, !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(20))
        }
        return isConnected
    }

    /// Keeps every wanted channel subscribed at its master until cancelled or `stop()`.
    public func run() async {
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.probeLinks() }
                while !Task.isCancelled, !state.withLock({ $0.stopped }) {
                    await reconcile()
                    await sleep(ms: Self.checkIntervalMs)
                }
                group.cancelAll()
            }
        } onCancel: {
            stopNow()
        }
        stopNow()
    }

    public func stop() async {
        stopNow()
    }

    /// How far behind the subscriptions are: a `PING` on every link each `probeIntervalMs`, the
    /// slowest round trip the lag (see `SubscriptionLag`).
    public let lag = SubscriptionLag()
    public var lagMs: Int64 { lag.ms(nowNs: DispatchTime.now().uptimeNanoseconds) }

    static let probeIntervalMs: Int64 = 100

    private func probeLinks() async {
        while !Task.isCancelled, !state.withLock({ $0.stopped }) {
            let links = state.withLock { Array($0.links.values) }
            if links.isEmpty {
                lag.reset()
            } else {
                lag.sent(atNs: DispatchTime.now().uptimeNanoseconds)
                // A link that closes fails its probe; the reconciliation replaces it.
                for reply in links.map({ $0.sendRawFuture(["PING"]) }) { _ = try? await reply.get() }
                lag.answered(atNs: DispatchTime.now().uptimeNanoseconds)
            }
            try? await Task.sleep(for: .milliseconds(Self.probeIntervalMs))
        }
    }

    private func stopNow() {
        let (links, wake) = state.withLock { state in
            state.stopped = true
            defer {
                state.links = [:]
                state.wake = nil
            }
            return (Array(state.links.values), state.wake)
        }
        for link in links { link.channel.close(promise: nil) }
        wake?.resume()
    }

    // MARK: Keeping the subscriptions

    /// One round: reads the map (again when something moved), subscribes what is not subscribed
    /// where its slot lives, closes links no channel needs, and reports what was caught up.
    private func reconcile() async {
        let refresh = state.withLock { state in
            defer { state.refreshMap = false }
            return state.refreshMap || !state.mapRead
        }
        let topology: ClusterTopology
        do {
            topology = try await cluster.topologyFuture(refresh: refresh).get()
            state.withLock { $0.mapRead = true }
        } catch {
            state.withLock { $0.mapRead = false }
            logger.warning("redis cluster unreachable for pub/sub", metadata: ["error": .string("\(error)")])
            return
        }
        let (missing, idle) = state.withLock { state -> ([RedisNodeAddress: [String]], [RedisNodeAddress]) in
            var missing: [RedisNodeAddress: [String]] = [:]
            for channel in state.wanted {
                guard let owner = topology.master(of: channel), state.subscribedAt[channel] != owner else { continue }
                missing[owner, default: []].append(channel)
            }
            let used = Set(state.subscribedAt.values).union(missing.keys)
            let idle = state.links.keys.filter { !used.contains($0) }
            return (missing, idle)
        }
        for address in idle {
            state.withLock { $0.links.removeValue(forKey: address) }?.channel.close(promise: nil)
        }
        for (owner, channels) in missing {
            do {
                try await subscribe(channels, at: owner, on: try await link(to: owner))
            } catch {
                logger.warning("redis shard subscription failed", metadata: [
                    "redis.node": .string(owner.description), "channels": .stringConvertible(channels.count), "error": .string("\(error)"),
                ])
                state.withLock { $0.refreshMap = true }
            }
        }
        let caughtUp = state.withLock { state -> [String] in
            let back = state.lost.filter { state.subscribedAt[$0] != nil }
            state.lost.subtract(back)
            return Array(back)
        }
        if !caughtUp.isEmpty {
            logger.info("redis shard channels subscribed again", metadata: ["channels": .stringConvertible(caughtUp.count)])
            onResubscribed(caughtUp)
        }
    }

    /// Subscribes the channels at their master, pipelined (a channel per `SSUBSCRIBE`: a command
    /// may only name channels of one slot).
    private func subscribe(_ channels: [String], at owner: RedisNodeAddress, on link: RedisConnection) async throws {
        let wanted = state.withLock { state in channels.filter(state.wanted.contains) }
        let replies = wanted.map { link.sendRawFuture(["SSUBSCRIBE", .string($0)]) }
        var refused: String?
        for (channel, reply) in zip(wanted, replies) {
            if case .error(let message) = try await reply.get() {
                // MOVED: the map is out of date; the next round subscribes where the slot lives.
                refused = message
                continue
            }
            state.withLock { state in
                if state.wanted.contains(channel) { state.subscribedAt[channel] = owner }
            }
        }
        if let refused {
            state.withLock { $0.refreshMap = true }
            wake()
            throw RedisError(.server, refused)
        }
    }

    /// The connection to a master, connecting when there is none.
    private func link(to address: RedisNodeAddress) async throws -> RedisConnection {
        if let link = state.withLock({ $0.links[address] }), link.isActive { return link }
        let onMessage = self.onMessage
        let connection = try await RedisConnection.connect(
            configuration.node(at: address), group: group,
            onPush: { [weak self] push in
                guard case .array(let parts) = push, let kind = parts.first?.string else { return }
                switch kind {
                case "sunsubscribe":
                    if let channel = parts[1].string { self?.ended(channel, at: address) }
                default:
                    guard parts.count >= 3, let channel = parts[parts.count - 2].string, case .bulkString(let payload) = parts[parts.count - 1]
                    else { return }
                    onMessage(channel, payload)
                }
            }, pushKinds: RedisChannelHandler.shardedKinds)
        let (chosen, stopped) = state.withLock { state -> (RedisConnection, Bool) in
            // Another caller connected meanwhile: one link per master.
            if let existing = state.links[address], existing.isActive { return (existing, state.stopped) }
            // A link that closed and was not yet noticed: its channels are lost.
            if state.links[address] != nil { Self.drop(&state, linkAt: address) }
            state.links[address] = connection
            return (connection, state.stopped)
        }
        guard chosen === connection else {
            connection.channel.close(promise: nil)
            return chosen
        }
        if stopped { connection.channel.close(promise: nil) }
        connection.channel.closeFuture.whenComplete { [weak self] _ in self?.closed(connection, at: address) }
        return connection
    }

    /// Forgets the link to a master: the channels subscribed there are lost until subscribed again.
    @discardableResult
    private static func drop(_ state: inout State, linkAt address: RedisNodeAddress) -> Int {
        state.links[address] = nil
        let channels = state.subscribedAt.filter { $0.value == address }.map(\.key)
        for channel in channels { state.subscribedAt[channel] = nil }
        state.lost.formUnion(channels.filter(state.wanted.contains))
        state.refreshMap = true
        return channels.count
    }

    /// Redis ended a subscription by itself: the slot moved.
    private func ended(_ channel: String, at address: RedisNodeAddress) {
        let moved = state.withLock { state -> Bool in
            guard state.subscribedAt[channel] == address else { return false }
            state.subscribedAt[channel] = nil
            guard state.wanted.contains(channel) else { return false }
            state.lost.insert(channel)
            state.refreshMap = true
            return true
        }
        if moved {
            logger.info("redis shard channel moved", metadata: ["channel": .string(channel), "redis.node": .string(address.description)])
            cluster.refreshSoon()
            wake()
        }
    }

    /// A master's connection closed: its channels are subscribed again where their slots live.
    private func closed(_ connection: RedisConnection, at address: RedisNodeAddress) {
        let lost = state.withLock { state -> Int in
            guard state.links[address] === connection else { return 0 }
            return Self.drop(&state, linkAt: address)
        }
        guard !state.withLock({ $0.stopped }) else { return }
        logger.warning("redis shard pub/sub connection lost", metadata: ["redis.node": .string(address.description), "channels": .stringConvertible(lost)])
        wake()
    }

    private func wake() {
        state.withLock { state in
            defer { state.wake = nil }
            return state.wake
        }?.resume()
    }

    /// Sleeps `ms`, or less when woken.
    private func sleep(ms: Int64) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withCheckedContinuation { continuation in
                    let now = self.state.withLock { state -> Bool in
                        if state.stopped || state.wake != nil { return true }
                        state.wake = continuation
                        return false
                    }
                    if now { continuation.resume() }
                }
            }
            group.addTask { try? await Task.sleep(for: .milliseconds(ms)) }
            await group.next()
            self.wake()
            group.cancelAll()
        }
    }
}
