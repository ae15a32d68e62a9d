/// Where an upcoming entry comes from.
public enum EntrySource: String, Codable, Sendable {
    /// Added by the user with `queue_add`; played before the rest of the context.
    case queue
    /// The rest of the context being played.
    case context
}

/// One upcoming entry. `entry` is stable for the entry's life, so the same track can be queued twice.
public struct QueueEntry: Codable, Sendable, Hashable {
    public var entry: String
    public var source: EntrySource
    public var track: Track

    public init(entry: String, source: EntrySource, track: Track) {
        self.entry = entry
        self.source = source
        self.track = track
    }
}
