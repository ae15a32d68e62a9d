/// What happens at the natural end of a track.
public enum RepeatMode: String, Codable, Sendable, CaseIterable {
    /// Advance; stop after the last entry.
    case off
    /// Play the same track again (only at the natural end; `next` still moves on).
    case track
    /// Advance, wrapping to the start of the context after its last entry.
    case context
}
