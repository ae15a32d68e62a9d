/// Why a play (one track on one device) ended.
public enum PlayEndReason: String, Codable, Sendable, CaseIterable {
    /// The track reached its natural end (`track_ended`).
    case finished
    /// Another track was started (`next`, `previous`, `play`, a seek past the end).
    case skipped
    /// Playback moved to another device; the same track continues there as a new play.
    case transferred
    /// The lease ended (released, expired) with nothing playing anywhere.
    case stopped
}

/// The play in progress: one entry on one device, and how long it has been heard.
/// Kept in `Playback` so that every node accounts for it the same way.
public struct Listening: Codable, Sendable, Equatable {
    public var entry: String
    public var trackID: String
    public var device: String?
    /// Server time the play began.
    public var startedAt: Int64
    /// Milliseconds heard so far (time spent playing, not position reached).
    public var playedMs: Int64
    /// Server time up to which `playedMs` is counted.
    public var countedUntil: Int64

    enum CodingKeys: String, CodingKey {
        case entry, device
        case trackID = "track_id"
        case startedAt = "started_at"
        case playedMs = "played_ms"
        case countedUntil = "counted_until"
    }
}

/// A finished play, as play history records it.
public struct PlayRecord: Codable, Sendable, Equatable {
    public var trackID: String
    /// Server time (ms) the play began and ended.
    public var playedAt: Int64
    public var endedAt: Int64
    public var msPlayed: Int64
    public var context: PlaybackContext?
    public var device: String?
    public var reason: PlayEndReason

    public init(
        trackID: String, playedAt: Int64, endedAt: Int64, msPlayed: Int64, context: PlaybackContext?, device: String?,
        reason: PlayEndReason
    ) {
        self.trackID = trackID
        self.playedAt = playedAt
        self.endedAt = endedAt
        self.msPlayed = msPlayed
        self.context = context
        self.device = device
        self.reason = reason
    }
}
