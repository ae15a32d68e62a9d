import Foundation
import Logging
import NIOCore
import NIOSSL
import PlaybackCore
import PostgresNIO

/// PostgreSQL, for what must outlive Redis: the catalog and licensing, users, devices, playback
/// snapshots and play history. Every call has a deadline (`PostgresSettings.timeout`) and fails
/// with a `StoreError` instead of waiting for a server that is down.
public final class PlaybackStore: Sendable {
    public let settings: PostgresSettings
    let client: PostgresClient
    let logger: Logger

    public init(settings: PostgresSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
        let tls: PostgresClient.Configuration.TLS =
            switch settings.tls {
            case .disable: .disable
            case .prefer: .prefer(.makeClientConfiguration())
            case .require: .require(.makeClientConfiguration())
            }
        var configuration = PostgresClient.Configuration(
            host: settings.host, port: settings.port, username: settings.user, password: settings.password,
            database: settings.database, tls: tls)
        configuration.options.maximumConnections = settings.maxConnections
        configuration.options.connectTimeout = settings.timeout
        configuration.options.keepAliveBehavior = .init(frequency: .seconds(15))
        var background = logger
        background.logLevel = max(logger.logLevel, .notice)
        client = PostgresClient(configuration: configuration, backgroundLogger: background)
    }

    /// Runs the connection pool; returns when the surrounding task is cancelled.
    public func run() async {
        await client.run()
    }

    // MARK: Schema

    /// Applies the migrations not yet applied; returns the versions applied now.
    @discardableResult
    public func migrate() async throws(StoreError) -> [Int] {
        try await deadline(.seconds(30)) { [logger] client in
            try await client.withTransaction(logger: logger) { connection in
                try await connection.query("SELECT pg_advisory_xact_lock(\(Migrations.lockKey))", logger: logger)
                try await connection.query(
                    """
                    CREATE TABLE IF NOT EXISTS schema_migrations (
                        version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())
                    """, logger: logger)
                var applied: Set<Int> = []
                for try await version in try await connection.query("SELECT version FROM schema_migrations", logger: logger)
                    .decode(Int.self)
                {
                    applied.insert(version)
                }
                var now: [Int] = []
                for step in Migrations.steps where !applied.contains(step.version) {
                    for statement in step.statements {
                        try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                    }
                    try await connection.query(
                        "INSERT INTO schema_migrations (version, name) VALUES (\(step.version), \(step.name))", logger: logger)
                    now.append(step.version)
                }
                return now
            }
        }
    }

    /// Whether the server answers.
    public func ping() async -> Bool {
        do {
            return try await deadline(settings.timeout) { client in
                for try await one in try await client.query("SELECT 1").decode(Int.self) { return one == 1 }
                return false
            }
        } catch {
            return false
        }
    }

    // MARK: Catalog

    /// The whole catalog (tracks, contexts, licenses), for the in-memory cache the reducer reads.
    public func loadCatalog() async throws(StoreError) -> StaticCatalog {
        try await deadline(.seconds(60)) { [logger] client in
            var tracks: [Track] = []
            for try await (id, title, artist, duration) in try await client.query(
                "SELECT id, title, artist, duration_ms FROM tracks ORDER BY id", logger: logger
            ).decode((String, String, String, Int64).self) {
                tracks.append(Track(id: id, title: title, artist: artist, durationMs: duration))
            }
            var restrictions: [String: Set<String>] = [:]
            for try await (id, country) in try await client.query(
                """
                SELECT t.id, l.country FROM tracks t LEFT JOIN track_licenses l ON l.track_id = t.id
                WHERE t.restricted
                """, logger: logger
            ).decode((String, String?).self) {
                restrictions[id, default: []].formUnion(country.map { [$0] } ?? [])
            }
            var contexts: [PlaybackContext: [String]] = [:]
            for try await (kind, id, track) in try await client.query(
                "SELECT kind, context_id, track_id FROM context_tracks ORDER BY kind, context_id, position", logger: logger
            ).decode((String, String, String).self) {
                contexts[PlaybackContext(kind: kind, id: id), default: []].append(track)
            }
            return StaticCatalog(tracks: tracks, contexts: contexts, restrictions: restrictions)
        }
    }

    /// Replaces the catalog with `catalog` (tracks, licenses, contexts) in one transaction.
    /// Play history and snapshots are untouched.
    public func replaceCatalog(_ catalog: StaticCatalog, albums: [String: String] = [:]) async throws(StoreError) {
        try await deadline(.seconds(300)) { [logger] client in
            try await client.withTransaction(logger: logger) { connection in
                try await connection.query("TRUNCATE tracks, track_licenses, contexts, context_tracks", logger: logger)
                let tracks = catalog.tracksByID.values.sorted { $0.id < $1.id }
                for chunk in tracks.chunked(5_000) {
                    let ids = chunk.map(\.id)
                    let titles = chunk.map(\.title)
                    let artists = chunk.map(\.artist)
                    let albumNames = chunk.map { albums[$0.id] ?? "" }
                    let durations = chunk.map(\.durationMs)
                    let restricted = chunk.map { catalog.restrictions[$0.id] != nil }
                    try await connection.query(
                        """
                        INSERT INTO tracks (id, title, artist, album, duration_ms, restricted)
                        SELECT id, title, artist, NULLIF(album, ''), duration, restricted
                        FROM unnest(\(ids)::text[], \(titles)::text[], \(artists)::text[], \(albumNames)::text[],
                                    \(durations)::bigint[], \(restricted)::boolean[])
                             AS t(id, title, artist, album, duration, restricted)
                        """, logger: logger)
                }
                let licenses = catalog.restrictions.flatMap { track, countries in countries.sorted().map { (track, $0) } }
                if !licenses.isEmpty {
                    try await connection.query(
                        """
                        INSERT INTO track_licenses (track_id, country)
                        SELECT * FROM unnest(\(licenses.map(\.0))::text[], \(licenses.map(\.1))::text[])
                        """, logger: logger)
                }
                let contexts = catalog.contexts.filter { $0.key.id != nil }.sorted { $0.key.uri < $1.key.uri }
                for (context, trackIDs) in contexts {
                    guard let contextID = context.id else { continue }
                    try await connection.query(
                        "INSERT INTO contexts (kind, id) VALUES (\(context.kind), \(contextID))", logger: logger)
                    try await connection.query(
                        """
                        INSERT INTO context_tracks (kind, context_id, position, track_id)
                        SELECT \(context.kind), \(contextID), position - 1, track
                        FROM unnest(\(trackIDs)::text[]) WITH ORDINALITY AS t(track, position)
                        """, logger: logger)
                }
            }
        }
    }

    // MARK: Users and devices

    /// The user's row, if there is one.
    public func user(id: String) async throws(StoreError) -> StoredUser? {
        try await deadline(settings.timeout) { [logger] client in
            for try await (country, tier) in try await client.query(
                "SELECT country, tier FROM users WHERE id = \(id)", logger: logger
            ).decode((String?, String?).self) {
                return StoredUser(id: id, country: country?.trimmingCharacters(in: .whitespaces), tier: tier)
            }
            return nil
        }
    }

    /// Creates or updates users; a nil country or tier leaves the stored one.
    public func upsertUsers(_ users: [StoredUser]) async throws(StoreError) {
        guard !users.isEmpty else { return }
        try await deadline(settings.timeout) { [logger] client in
            try await client.query(
                """
                INSERT INTO users (id, country, tier)
                SELECT id, NULLIF(country, ''), NULLIF(tier, '')
                FROM unnest(\(users.map(\.id))::text[], \(users.map { $0.country ?? "" })::text[],
                            \(users.map { $0.tier ?? "" })::text[]) AS u(id, country, tier)
                ON CONFLICT (id) DO UPDATE SET
                    country = COALESCE(EXCLUDED.country, users.country),
                    tier = COALESCE(EXCLUDED.tier, users.tier)
                """, logger: logger)
        }
    }

    public func upsertDevices(_ devices: [StoredDeviceRow]) async throws(StoreError) {
        guard !devices.isEmpty else { return }
        try await deadline(settings.timeout) { [logger] client in
            try await client.query(
                """
                INSERT INTO devices (user_id, device_id, name, kind, first_seen, last_seen)
                SELECT u, d, n, k, to_timestamp(s / 1000.0), to_timestamp(s / 1000.0)
                FROM unnest(\(devices.map(\.userID))::text[], \(devices.map(\.deviceID))::text[],
                            \(devices.map(\.name))::text[], \(devices.map(\.kind))::text[],
                            \(devices.map(\.lastSeen))::bigint[]) AS t(u, d, n, k, s)
                ON CONFLICT (user_id, device_id) DO UPDATE SET
                    name = EXCLUDED.name, kind = EXCLUDED.kind,
                    last_seen = GREATEST(devices.last_seen, EXCLUDED.last_seen)
                """, logger: logger)
        }
    }

    // MARK: Snapshots

    /// Writes snapshots; an older version never overwrites a newer one (nodes may write out of order).
    public func saveSnapshots(_ snapshots: [PlaybackSnapshot]) async throws(StoreError) {
        guard !snapshots.isEmpty else { return }
        try await deadline(settings.timeout) { [logger] client in
            try await client.query(
                """
                INSERT INTO playback_snapshots (user_id, epoch, version, state, updated_at)
                SELECT u, e, v, s::jsonb, to_timestamp(t / 1000.0)
                FROM unnest(\(snapshots.map(\.userID))::text[], \(snapshots.map(\.epoch))::bigint[],
                            \(snapshots.map(\.version))::bigint[], \(snapshots.map(\.stateJSON))::text[],
                            \(snapshots.map(\.takenAt))::bigint[]) AS t(u, e, v, s, t)
                ON CONFLICT (user_id) DO UPDATE SET
                    epoch = EXCLUDED.epoch, version = EXCLUDED.version, state = EXCLUDED.state,
                    updated_at = EXCLUDED.updated_at
                WHERE (playback_snapshots.epoch, playback_snapshots.version) < (EXCLUDED.epoch, EXCLUDED.version)
                """, logger: logger)
        }
    }

    public func loadSnapshot(user: String) async throws(StoreError) -> PlaybackSnapshot? {
        try await deadline(settings.timeout) { [logger] client in
            for try await (epoch, version, state, takenAt) in try await client.query(
                """
                SELECT epoch, version, state::text, (extract(epoch FROM updated_at) * 1000)::bigint
                FROM playback_snapshots WHERE user_id = \(user)
                """, logger: logger
            ).decode((Int64, Int64, String, Int64).self) {
                return PlaybackSnapshot(userID: user, epoch: epoch, version: version, stateJSON: state, takenAt: takenAt)
            }
            return nil
        }
    }

    // MARK: Play history

    public func insertPlays(_ plays: [HistoryRow]) async throws(StoreError) {
        guard !plays.isEmpty else { return }
        try await deadline(settings.timeout) { [logger] client in
            try await client.query(
                """
                INSERT INTO play_history
                    (user_id, track_id, played_at, ended_at, ms_played, context, device_id, device_kind, end_reason)
                SELECT u, t, to_timestamp(p / 1000.0), to_timestamp(e / 1000.0), m, NULLIF(c, ''), NULLIF(d, ''),
                       NULLIF(k, ''), r
                FROM unnest(\(plays.map(\.userID))::text[], \(plays.map(\.record.trackID))::text[],
                            \(plays.map(\.record.playedAt))::bigint[], \(plays.map(\.record.endedAt))::bigint[],
                            \(plays.map(\.record.msPlayed))::bigint[], \(plays.map(\.contextURI))::text[],
                            \(plays.map { $0.record.device ?? "" })::text[], \(plays.map { $0.deviceKind ?? "" })::text[],
                            \(plays.map(\.record.reason.rawValue))::text[]) AS h(u, t, p, e, m, c, d, k, r)
                """, logger: logger)
        }
    }

    /// The user's latest plays, newest first.
    public func recentPlays(user: String, limit: Int) async throws(StoreError) -> [HistoryRow] {
        try await deadline(settings.timeout) { [logger] client in
            var rows: [HistoryRow] = []
            for try await (track, playedAt, endedAt, ms, context, device, kind, reason) in try await client.query(
                """
                SELECT track_id, (extract(epoch FROM played_at) * 1000)::bigint,
                       (extract(epoch FROM ended_at) * 1000)::bigint, ms_played, context, device_id, device_kind, end_reason
                FROM play_history WHERE user_id = \(user) ORDER BY ended_at DESC, id DESC LIMIT \(limit)
                """, logger: logger
            ).decode((String, Int64, Int64, Int64, String?, String?, String?, String).self) {
                let record = PlayRecord(
                    trackID: track, playedAt: playedAt, endedAt: endedAt, msPlayed: ms,
                    context: context.flatMap(PlaybackContext.init(uri:)), device: device,
                    reason: PlayEndReason(rawValue: reason) ?? .stopped)
                rows.append(HistoryRow(userID: user, record: record, deviceKind: kind))
            }
            return rows
        }
    }

    // MARK: Deadlines

    /// Runs `body` with a deadline; a server that is down or slow becomes a `StoreError`.
    @discardableResult
    func deadline<T: Sendable>(
        _ limit: Duration, _ body: @escaping @Sendable (PostgresClient) async throws -> T
    ) async throws(StoreError) -> T {
        let client = self.client
        do {
            return try await withThrowingTaskGroup(of: T?.self) { group in
                group.addTask { try await body(client) }
                group.addTask {
                    try await Task.sleep(for: limit)
                    return nil
                }
                defer { group.cancelAll() }
                guard let first = try await group.next(), let value = first else {
                    throw StoreError(.timeout, "no answer from postgres within \(limit)")
                }
                return value
            }
        } catch let error as StoreError {
            throw error
        } catch let error as PSQLError {
            guard let state = error.serverInfo?[.sqlState] else { throw StoreError(.unavailable, Self.describe(error)) }
            throw StoreError(state.hasPrefix("22") || state.hasPrefix("23") ? .rejected : .query, Self.describe(error))
        } catch {
            throw StoreError(.unavailable, "\(error)")
        }
    }

    private static func describe(_ error: PSQLError) -> String {
        if let message = error.serverInfo?[.message] { return message }
        return "\(error.code)"
    }
}
