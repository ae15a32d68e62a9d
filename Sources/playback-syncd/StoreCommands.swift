import ArgumentParser
import Logging
import PlaybackEngine
import PlaybackStore

/// Options shared by the commands that talk to PostgreSQL.
struct PostgresOptions: ParsableArguments {
    @Option(help: "PostgreSQL: postgres://user[:password]@host[:port]/database[?sslmode=disable|prefer|require]. Enables the catalog, licensing, snapshots and play history from it. [PLAYBACK_POSTGRES_URL, default: none]")
    var postgresUrl: String?

    func settings() throws -> PostgresSettings? {
        guard let url = setting(postgresUrl, "PLAYBACK_POSTGRES_URL") else { return nil }
        do {
            return try PostgresSettings(url: url)
        } catch {
            throw ValidationError(error.description)
        }
    }

    /// Runs `body` with a store whose migrations are applied; its connection pool runs beside
    /// `body` (in a task group of its own) and stops when `body` returns.
    func withStore<T: Sendable>(logger: Logger, _ body: (PlaybackStore) async throws -> T) async throws -> T {
        guard let settings = try settings() else { throw ValidationError("set --postgres-url or PLAYBACK_POSTGRES_URL") }
        let store = PlaybackStore(settings: settings, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { pool in
            pool.addTask { await store.run() }
            defer { pool.cancelAll() }
            do {
                let applied = try await store.migrate()
                logger.info("postgres ready", metadata: [
                    "postgres.url": .string(settings.redacted), "migrations.applied": .string(applied.map(String.init).joined(separator: ",")),
                ])
            } catch {
                throw ValidationError("PostgreSQL at \(settings.redacted): \(error)")
            }
            return try await body(store)
        }
    }
}

/// `playback-syncd migrate`: applies the schema migrations and exits.
struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply the PostgreSQL schema migrations (the daemon also does at start).")
    @OptionGroup var postgres: PostgresOptions
    @Option(help: "Log level. [PLAYBACK_LOG_LEVEL, default info]") var logLevel: String?

    func run() async throws {
        try bootstrapLogging(logLevel)
        try await postgres.withStore(logger: Logger(label: "playback-syncd")) { _ in }
    }
}

/// `playback-syncd seed-catalog`: loads the deterministic demo catalog into PostgreSQL.
struct SeedCatalog: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load the deterministic demo catalog into PostgreSQL (replacing the catalog tables).",
        discussion: "Tracks t0001…, albums of ten (a01…), playlists p1…p5; every 50th track from t0013 is licensed only in SE and NO. The first 300 tracks are the built-in catalog's.")
    @OptionGroup var postgres: PostgresOptions
    @Option(help: "How many tracks.") var tracks = 10_000
    @Flag(help: "Do nothing when the tracks table already has tracks.") var ifEmpty = false
    @Option(help: "Log level. [PLAYBACK_LOG_LEVEL, default info]") var logLevel: String?

    func run() async throws {
        try bootstrapLogging(logLevel)
        let logger = Logger(label: "playback-syncd")
        guard tracks > 0 else { throw ValidationError("--tracks must be positive") }
        let tracks = self.tracks
        let ifEmpty = self.ifEmpty
        try await postgres.withStore(logger: logger) { store in
            if ifEmpty, let existing = try? await store.loadCatalog(), !existing.tracksByID.isEmpty {
                print("catalog already has \(existing.tracksByID.count) tracks; left as it is")
                return
            }
            let catalog = DemoCatalog.make(trackCount: tracks)
            var albums: [String: String] = [:]
            for number in 1...tracks { albums[DemoCatalog.trackID(number)] = DemoCatalog.albumID(ofTrack: number) }
            do {
                try await store.replaceCatalog(catalog, albums: albums)
            } catch {
                throw ValidationError("seeding failed: \(error)")
            }
            print("catalog seeded: \(catalog.tracksByID.count) tracks, \(catalog.contexts.count) contexts, \(catalog.restrictions.count) region-restricted")
        }
    }
}
