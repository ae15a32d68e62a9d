import DeviceSimKit
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
        (try await redisVersions(of: users), try await postgresVersions(of: users))
    }

    private func redisVersions(of users: [String]) async throws -> [String: StoredVersion]? {
        guard let redisURL else { return nil }
        let configuration = try RedisConfiguration(url: redisURL)
        let client: any RedisCommands =
            configuration.isCluster ? RedisClusterClient(configuration: configuration) : RedisClient(configuration: configuration)
        do {
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
            await client.shutdown()
            return found
        } catch {
            await client.shutdown()
            throw error
        }
    }

    private func postgresVersions(of users: [String]) async throws -> [String: StoredVersion]? {
        guard let postgresURL else { return nil }
        var logger = Logger(label: "device-sim.check")
        logger.logLevel = .critical
        let store = PlaybackStore(settings: try PostgresSettings(url: postgresURL), logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { pool in
            pool.addTask { await store.run() }
            defer { pool.cancelAll() }
            var found: [String: StoredVersion] = [:]
            for user in users {
                if let snapshot = try await store.loadSnapshot(user: user) {
                    found[user] = StoredVersion(version: snapshot.version, epoch: snapshot.epoch)
                }
            }
            return found
        }
    }
}
