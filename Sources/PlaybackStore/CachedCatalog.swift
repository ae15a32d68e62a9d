import Logging
import PlaybackCore
import Synchronization

/// The catalog the reducer reads, held in memory and loaded from PostgreSQL: at start, then
/// every `refreshInterval` (so tracks and licenses added to the tables show up without a restart).
/// The reducer is synchronous, so a lookup never goes to the database; a failed refresh keeps the
/// last good copy.
public final class CachedCatalog: TrackCatalog, Sendable {
    private let current: Mutex<StaticCatalog>
    private let store: PlaybackStore

    /// Loads the catalog once; fails when PostgreSQL cannot be read or has no tracks.
    public init(store: PlaybackStore) async throws(StoreError) {
        let loaded = try await store.loadCatalog()
        guard !loaded.tracksByID.isEmpty else {
            throw StoreError(.configuration, "the tracks table is empty: seed it with `playback-syncd seed-catalog`")
        }
        self.store = store
        self.current = Mutex(loaded)
    }

    public var trackCount: Int { current.withLock { $0.tracksByID.count } }

    /// Reloads until cancelled.
    public func refresh(every interval: Duration, logger: Logger) async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: interval) } catch { return }
            do {
                let loaded = try await store.loadCatalog()
                guard !loaded.tracksByID.isEmpty else { continue }
                current.withLock { $0 = loaded }
            } catch {
                logger.warning("catalog refresh failed; keeping the cached copy", metadata: ["error": .string(error.description)])
            }
        }
    }

    public func track(id: String) -> Track? { current.withLock { $0.track(id: id) } }

    public func tracks(in context: PlaybackContext) -> [Track]? { current.withLock { $0.tracks(in: context) } }

    public func isLicensed(trackID: String, country: String?) -> Bool {
        current.withLock { $0.isLicensed(trackID: trackID, country: country) }
    }

    public func search(_ query: String, limit: Int) -> [Track] {
        let snapshot = current.withLock { $0 }
        return snapshot.search(query, limit: limit)
    }
}
