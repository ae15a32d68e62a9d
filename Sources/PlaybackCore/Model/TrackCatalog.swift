/// Where the reducer finds tracks, contexts and licensing. Implementations must answer
/// from memory (the reducer is pure and synchronous): a built-in table, or a cache loaded from storage.
public protocol TrackCatalog: Sendable {
    func track(id: String) -> Track?
    /// The tracks of an album or playlist in order, or nil when there is no such context.
    func tracks(in context: PlaybackContext) -> [Track]?
    /// Whether the track may be played in the country (ISO 3166-1 alpha-2); nil country means unknown: allowed.
    func isLicensed(trackID: String, country: String?) -> Bool
    /// Tracks whose id, title or artist contains `query` (case-insensitive), at most `limit`, in id order.
    func search(_ query: String, limit: Int) -> [Track]
}

/// A catalog held in dictionaries: the demo catalog and tests use it.
public struct StaticCatalog: TrackCatalog {
    public var tracksByID: [String: Track]
    public var contexts: [PlaybackContext: [String]]
    /// Track id → the only countries it is licensed in; tracks not listed play everywhere.
    public var restrictions: [String: Set<String>]

    public init(tracks: [Track], contexts: [PlaybackContext: [String]] = [:], restrictions: [String: Set<String>] = [:]) {
        var byID: [String: Track] = [:]
        byID.reserveCapacity(tracks.count)
        for track in tracks { byID[track.id] = track }
        self.tracksByID = byID
        self.contexts = contexts
        self.restrictions = restrictions
    }

    public func track(id: String) -> Track? { tracksByID[id] }

    public func tracks(in context: PlaybackContext) -> [Track]? {
        contexts[context].map { ids in ids.compactMap { tracksByID[$0] } }
    }

    public func isLicensed(trackID: String, country: String?) -> Bool {
        guard let country, let allowed = restrictions[trackID] else { return true }
        return allowed.contains(country)
    }

    public func search(_ query: String, limit: Int) -> [Track] {
        let needle = query.lowercased()
        let matches = tracksByID.values.filter { track in
            needle.isEmpty || track.id.lowercased().contains(needle) || track.title.lowercased().contains(needle)
                || track.artist.lowercased().contains(needle)
        }
        return Array(matches.sorted { $0.id < $1.id }.prefix(max(limit, 0)))
    }
}
