import Logging
import RedisClient

/// The multi-node engine: each user's playback, lease and devices in Redis (`RedisStorage`), which
/// is also the bus between daemons. A node keeps the state of the users it has devices of, runs
/// each command on it and commits with one script call (a conflict reply carries the current
/// state for the retry), and delivers changes to its local devices from the user's pub/sub
/// channel, in channel order, whichever node made them. Call `start()` before serving.
public typealias RedisEngine = StorageEngine<RedisStorage>

extension StorageEngine where Storage == RedisStorage {
    public convenience init(
        redis: RedisConfiguration, catalog: any TrackCatalog = DemoCatalog.shared, configuration: EngineConfiguration = EngineConfiguration(),
        durability: Durability? = nil, clock: @escaping @Sendable () -> Int64 = ServerClock.nowMs,
        logger: Logger = Logger(label: "playback.engine.redis")
    ) {
        let nodeID = "n-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        self.init(
            storage: RedisStorage(configuration: redis, nodeID: nodeID, logger: logger), nodeID: nodeID, catalog: catalog,
            configuration: configuration, durability: durability, clock: clock, logger: logger)
    }
}
