import Logging
import NIOCore
import NIOPosix
import Synchronization

/// A Redis Cluster client: the slot map from `CLUSTER SLOTS`, one pipelined `RedisClient` per
/// master (each with the single-node client's timeouts, reconnects and backoff), every command
/// sent to the master of its key's slot.
///
/// Redirects: `MOVED` updates the map at once, refreshes it in the background and sends the
/// command again at the new master; `ASK` sends it once to the importing node after `ASKING`;
/// `TRYAGAIN` (keys split by a migration) is retried shortly. A command is only ever sent again
/// when Redis said it did not run it (a redirect); a lost connection fails the command, since it
/// may or may not have run (callers decide), and refreshes the map (a failover moves masters).
/// Scripts are loaded on each master as it first needs them, and again after `NOSCRIPT`.
public final class RedisClusterClient: RedisCommands {
    public let configuration: RedisConfiguration
    private let seeds: [RedisNodeAddress]
    private let group: any EventLoopGroup
    private let logger: Logger

    /// Redirects followed for one command before giving up.
    static let maxRedirects = 5
    /// Refreshes of the map at most this often (a failover makes every command ask for one).
    static let refreshIntervalMs: Int64 = 100

    private struct State {
        var topology: ClusterTopology?
        var nodes: [RedisNodeAddress: RedisClient] = [:]
        var refreshing: EventLoopFuture<ClusterTopology>?
        var lastRefresh: ContinuousClock.Instant?
        var closed = false
    }

    private let state = Mutex(State())

    public init(
        configuration: RedisConfiguration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "playback.redis.cluster")
    ) {
        self.configuration = configuration
        self.seeds = configuration.clusterSeeds ?? [RedisNodeAddress(host: configuration.host, port: configuration.port)]
        self.group = group
        self.logger = logger
    }

    public var endpoint: String { configuration.redacted }

    /// The slot map as last read (nil before the first read).
    public var topology: ClusterTopology? { state.withLock { $0.topology } }

    // MARK: Commands

    public func send(_ arguments: [RedisArgument]) async throws -> RESPValue {
        let reply = try await sendRawFuture(arguments).get()
        if case .error(let message) = reply { throw RedisError(.server, message) }
        return reply
    }

    /// Sends a command to the master of `arguments[1]`'s slot (any master when it has no key);
    /// the reply comes as is, redirects followed.
    public func sendRawFuture(_ arguments: [RedisArgument]) -> EventLoopFuture<RESPValue> {
        let slot = arguments.count > 1 ? Self.slot(of: arguments[1]) : nil
        return execute(slot: slot, attempt: 0, run: { $0.sendRawFuture(arguments) }, asking: { $0.sendAskingFuture(arguments) })
    }

    public func evaluate(_ script: RedisScript, keys: [String], arguments: [RedisArgument]) async throws -> RESPValue {
        let reply = try await evaluateFuture(script, keys: keys, arguments: arguments).get()
        if case .error(let message) = reply { throw RedisError(.server, message) }
        return reply
    }

    public func evaluateFuture(_ script: RedisScript, keys: [String], arguments: [RedisArgument]) -> EventLoopFuture<RESPValue> {
        let slot = keys.first.map(HashSlot.of)
        // Asked elsewhere for one command: the source itself, not worth a SCRIPT LOAD there.
        let eval: [RedisArgument] = ["EVAL", .string(script.source), .integer(Int64(keys.count))] + keys.map { .string($0) } + arguments
        return execute(
            slot: slot, attempt: 0, run: { $0.evaluateFuture(script, keys: keys, arguments: arguments) },
            asking: { $0.sendAskingFuture(eval) })
    }

    /// The node clients of every master, for commands that go to all of them (`SCRIPT FLUSH`, `FLUSHALL`).
    public func masters() async throws -> [RedisClient] {
        let topology = try await topologyFuture(refresh: false).get()
        return topology.allMasters.sorted { $0.description < $1.description }.map(node)
    }

    public func shutdown() async {
        let nodes = state.withLock { state in
            state.closed = true
            return Array(state.nodes.values)
        }
        for node in nodes { await node.shutdown() }
    }

    // MARK: Routing

    private func execute(
        slot: Int?, attempt: Int, run: @escaping @Sendable (RedisClient) -> EventLoopFuture<RESPValue>,
        asking: @escaping @Sendable (RedisConnection) -> EventLoopFuture<RESPValue>
    ) -> EventLoopFuture<RESPValue> {
        // The map in hand: no hop through another event loop on the way to the master.
        if let topology = state.withLock({ $0.topology }) {
            return send(on: topology, slot: slot, attempt: attempt, run: run, asking: asking)
        }
        return topologyFuture(refresh: false).flatMap { topology in
            self.send(on: topology, slot: slot, attempt: attempt, run: run, asking: asking)
        }
    }

    private func send(
        on topology: ClusterTopology, slot: Int?, attempt: Int, run: @escaping @Sendable (RedisClient) -> EventLoopFuture<RESPValue>,
        asking: @escaping @Sendable (RedisConnection) -> EventLoopFuture<RESPValue>
    ) -> EventLoopFuture<RESPValue> {
        guard let address = slot.map({ topology.master(ofSlot: $0) }) ?? topology.allMasters.first else {
            refreshSoon()
            return group.any().makeFailedFuture(RedisError(.unavailable, "no master serves slot \(slot ?? -1) of the cluster"))
        }
        let sent = run(node(address))
        return sent
            .flatMapError { error in
                // The master may be gone (a failover): look again, and let the caller decide.
                self.refreshSoon()
                return sent.eventLoop.makeFailedFuture(error)
            }
            .flatMap { reply in
                guard let redirect = ClusterRedirect(reply) else { return sent.eventLoop.makeSucceededFuture(reply) }
                return self.follow(redirect, reply: reply, slot: slot, attempt: attempt, run: run, asking: asking)
            }
    }

    private func follow(
        _ redirect: ClusterRedirect, reply: RESPValue, slot: Int?, attempt: Int,
        run: @escaping @Sendable (RedisClient) -> EventLoopFuture<RESPValue>,
        asking: @escaping @Sendable (RedisConnection) -> EventLoopFuture<RESPValue>
    ) -> EventLoopFuture<RESPValue> {
        let loop = group.any()
        guard attempt < Self.maxRedirects else {
            return loop.makeFailedFuture(RedisError(.unavailable, "gave up after \(attempt) redirects: \(reply)"))
        }
        switch redirect {
        case .moved(let movedSlot, let address):
            state.withLock { $0.topology?.move(slot: movedSlot, to: address) }
            refreshSoon()
            return execute(slot: slot, attempt: attempt + 1, run: run, asking: asking)
        case .ask(_, let address):
            return node(address).connectionFuture().flatMap(asking)
        case .tryAgain:
            return loop.scheduleTask(in: .milliseconds(25 << Int64(attempt))) {}.futureResult
                .flatMap { self.execute(slot: slot, attempt: attempt + 1, run: run, asking: asking) }
        case .down:
            refreshSoon()
            return loop.makeFailedFuture(RedisError(.unavailable, "the cluster is down for this slot: \(reply)"))
        }
    }

    /// The client of one master, made on first use.
    private func node(_ address: RedisNodeAddress) -> RedisClient {
        state.withLock { state in
            if let client = state.nodes[address] { return client }
            let client = RedisClient(configuration: configuration.node(at: address), group: group, logger: logger)
            state.nodes[address] = client
            return client
        }
    }

    static func slot(of argument: RedisArgument) -> Int {
        switch argument {
        case .string(let key): HashSlot.of(key)
        case .bytes(let bytes): HashSlot.of(Array(bytes.readableBytesView))
        case .integer(let value): HashSlot.of(String(value))
        }
    }

    // MARK: The slot map

    /// The map, read first when there is none yet (or when `refresh`); one read at a time, shared.
    func topologyFuture(refresh: Bool) -> EventLoopFuture<ClusterTopology> {
        let loop = group.any()
        enum Decision {
            case ready(ClusterTopology)
            case join(EventLoopFuture<ClusterTopology>)
            case read(EventLoopPromise<ClusterTopology>, candidates: [RedisNodeAddress])
            case closed
        }
        let decision: Decision = state.withLock { state in
            if state.closed { return .closed }
            if !refresh, let topology = state.topology { return .ready(topology) }
            if let refreshing = state.refreshing { return .join(refreshing) }
            let promise = loop.makePromise(of: ClusterTopology.self)
            state.refreshing = promise.futureResult
            state.lastRefresh = .now
            // The masters known so far, then the seeds, until one answers.
            var candidates = state.topology.map { Array($0.allMasters) } ?? []
            for seed in seeds where !candidates.contains(seed) { candidates.append(seed) }
            return .read(promise, candidates: candidates)
        }
        switch decision {
        case .closed:
            return loop.makeFailedFuture(RedisError(.unavailable, "the client is shut down"))
        case .ready(let topology):
            return loop.makeSucceededFuture(topology)
        case .join(let future):
            return future
        case .read(let promise, let candidates):
            readSlots(from: candidates[...]).whenComplete { result in
                let previous = self.state.withLock { state -> ClusterTopology? in
                    defer {
                        state.refreshing = nil
                        if case .success(let topology) = result { state.topology = topology }
                    }
                    return state.topology
                }
                switch result {
                case .success(let topology) where topology != previous:
                    self.logger.info("redis cluster map read", metadata: [
                        "masters": .string(topology.allMasters.map(\.description).sorted().joined(separator: ",")),
                        "uncovered_slots": .stringConvertible(topology.uncovered),
                    ])
                case .success:
                    break
                case .failure(let error):
                    self.logger.warning("redis cluster map unreadable", metadata: ["error": .string("\(error)")])
                }
                promise.completeWith(result)
            }
            return promise.futureResult
        }
    }

    /// Reads `CLUSTER SLOTS` from the first candidate that answers.
    private func readSlots(from candidates: ArraySlice<RedisNodeAddress>) -> EventLoopFuture<ClusterTopology> {
        guard let address = candidates.first else {
            let error = RedisError(.unavailable, "no node of the cluster answers (seeds \(seeds.map(\.description).joined(separator: ",")))")
            return group.any().makeFailedFuture(error)
        }
        return node(address).sendRawFuture(["CLUSTER", "SLOTS"])
            .flatMapThrowing { reply -> ClusterTopology in
                if case .error(let message) = reply { throw RedisError(.server, message) }
                let topology = try ClusterTopology(slots: reply, answeredBy: address)
                guard !topology.allMasters.isEmpty else { throw RedisError(.unavailable, "\(address) knows no master") }
                return topology
            }
            .flatMapError { _ in self.readSlots(from: candidates.dropFirst()) }
    }

    /// Refreshes the map in the background, at most every `refreshIntervalMs`.
    public func refreshSoon() {
        let due = state.withLock { state in
            guard !state.closed, state.refreshing == nil else { return false }
            guard let last = state.lastRefresh else { return true }
            return ContinuousClock.now - last >= .milliseconds(Self.refreshIntervalMs)
        }
        if due { _ = topologyFuture(refresh: true) }
    }
}
