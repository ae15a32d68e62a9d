/// The player state every device of a user converges to, as sent on the wire.
///
/// Every field is always present (empty is `null`), except `queue`, which `state` events
/// leave out (`nil`) when the queue did not change in that version.
public struct PlayerState: Codable, Sendable, Hashable {
    public var epoch: Int64
    public var version: Int64
    public var activeDevice: String?
    public var track: Track?
    public var isPlaying: Bool
    /// True at server time `positionAt`; while playing, the position advances with the clock.
    public var positionMs: Int64
    public var positionAt: Int64
    public var volume: Int
    public var `repeat`: RepeatMode
    public var shuffle: Bool
    public var context: PlaybackContext?
    public var queue: [QueueEntry]?

    public init(
        epoch: Int64 = 0, version: Int64 = 0, activeDevice: String? = nil, track: Track? = nil,
        isPlaying: Bool = false, positionMs: Int64 = 0, positionAt: Int64 = 0, volume: Int = 100,
        repeat: RepeatMode = .off, shuffle: Bool = false, context: PlaybackContext? = nil,
        queue: [QueueEntry]? = []
    ) {
        self.epoch = epoch
        self.version = version
        self.activeDevice = activeDevice
        self.track = track
        self.isPlaying = isPlaying
        self.positionMs = positionMs
        self.positionAt = positionAt
        self.volume = volume
        self.repeat = `repeat`
        self.shuffle = shuffle
        self.context = context
        self.queue = queue
    }

    /// The position at server time `now`: frozen while paused, advancing while playing,
    /// never outside `[0, duration]`.
    public func position(at now: Int64) -> Int64 {
        PositionMath.position(
            positionMs: positionMs, positionAt: positionAt, isPlaying: isPlaying,
            durationMs: track?.durationMs, now: now)
    }

    enum CodingKeys: String, CodingKey {
        case epoch, version, track, volume, `repeat`, shuffle, context, queue
        case activeDevice = "active_device"
        case isPlaying = "is_playing"
        case positionMs = "position_ms"
        case positionAt = "position_at"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(epoch, forKey: .epoch)
        try c.encode(version, forKey: .version)
        try c.encode(activeDevice, forKey: .activeDevice)
        try c.encode(track, forKey: .track)
        try c.encode(isPlaying, forKey: .isPlaying)
        try c.encode(positionMs, forKey: .positionMs)
        try c.encode(positionAt, forKey: .positionAt)
        try c.encode(volume, forKey: .volume)
        try c.encode(`repeat`, forKey: .repeat)
        try c.encode(shuffle, forKey: .shuffle)
        try c.encode(context, forKey: .context)
        try c.encodeIfPresent(queue, forKey: .queue)
    }
}

/// Position arithmetic shared by the server, the reducer and clients.
public enum PositionMath {
    /// The extrapolated position: `positionMs + (now - positionAt)` while playing, clamped to `[0, duration]`.
    public static func position(
        positionMs: Int64, positionAt: Int64, isPlaying: Bool, durationMs: Int64?, now: Int64
    ) -> Int64 {
        var position = positionMs
        if isPlaying {
            let elapsed = now.subtractingReportingOverflow(positionAt)
            if !elapsed.overflow, elapsed.partialValue > 0 {
                position = position.addingReportingOverflow(elapsed.partialValue).partialValue
            }
        }
        return clamp(position, durationMs: durationMs)
    }

    /// Clamps a position into `[0, duration]` (`[0, ∞)` when the duration is unknown).
    public static func clamp(_ position: Int64, durationMs: Int64?) -> Int64 {
        let upper = durationMs ?? Int64.max
        return min(max(position, 0), max(upper, 0))
    }
}
