import Logging
import PlaybackStore
import RedisClient

/// Reads what Redis (`pb:{u:ID}` version and epoch) and the PostgreSQL snapshots hold for a list
/// of users, for the invariant checker (`device-sim swarm --check`, the fault tests).
public struct StoreInspector: Sendable {
    public var redisURL: String?
    public var postgresURL: String?

    public init(redisURL: String?, postgresURL: String?) {
        self.redisURL = redisURL
        self.postgresURL = postgresURL
    }

    public func read(users: [String]) async throws -> (redis: [String: StoredVersion]?, postgres: [String: StoredVersion]?) {
        var redis: [String: StoredVersion]?
        var postgres: [String: StoredVersion]?
        if let redisURL {
            let client = RedisClient(configuration: try RedisConfiguration(url: redisURL))
            defer { Task { await client.shutdown() } }
            var found: [String: StoredVersion] = [:]
            try await withThrowingTaskGroup(of: (String, StoredVersion?).self) { group in
                for user in users {
                    group.addTask {
                        let reply = try await client.send(["HMGET", .string("pb:{u:\(user)}"), "version", "epoch"])
                        guard case .array(let fields) = reply, fields.count == 2,
                              let version = fields[0].string.flatMap({ Int64($0) }), let epoch = fields[1].string.flatMap({ Int64($0) })
                        else { return (user, nil) }
                        return (user, StoredVersion(version: version, epoch: epoch))
                    }
                }
                for try await (user, stored) in group { if let stored { found[user] = stored } }
            }
            redis = found
        }
        if let postgresURL {
            var logger = Logger(label: "device-sim.check")
            logger.logLevel = .critical
            let store = PlaybackStore(settings: try PostgresSettings(url: postgresURL), logger: logger)
            let running = Task { await store.run() }
            defer { running.cancel() }
            var found: [String: StoredVersion] = [:]
            for user in users {
                if let snapshot = try await store.loadSnapshot(user: user) {
                    found[user] = StoredVersion(version: snapshot.version, epoch: snapshot.epoch)
                }
            }
            postgres = found
        }
        return (redis, postgres)
    }
}
