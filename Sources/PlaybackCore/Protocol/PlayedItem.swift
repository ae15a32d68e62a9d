/// One entry of recently played tracks, on the wire (`history`, `GET /v1/me/player/recently-played`).
public struct PlayedItem: Codable, Sendable, Equatable {
    public struct Device: Codable, Sendable, Equatable {
        public var id: String
        public var kind: String?

        public init(id: String, kind: String?) {
            self.id = id
            self.kind = kind
        }
    }

    public static let defaultLimit = 20
    public static let maxLimit = 50

    public var track: Track
    /// Server time (ms) the play began and ended.
    public var playedAt: Int64
    public var endedAt: Int64
    public var msPlayed: Int64
    public var context: PlaybackContext?
    public var device: Device?
    public var reason: PlayEndReason

    public init(track: Track, record: PlayRecord, deviceKind: String?) {
        self.track = track
        playedAt = record.playedAt
        endedAt = record.endedAt
        msPlayed = record.msPlayed
        context = record.context
        device = record.device.map { Device(id: $0, kind: deviceKind) }
        reason = record.reason
    }

    enum CodingKeys: String, CodingKey {
        case track, context, device, reason
        case playedAt = "played_at"
        case endedAt = "ended_at"
        case msPlayed = "ms_played"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(track, forKey: .track)
        try c.encode(playedAt, forKey: .playedAt)
        try c.encode(endedAt, forKey: .endedAt)
        try c.encode(msPlayed, forKey: .msPlayed)
        try c.encode(context, forKey: .context)
        try c.encode(device, forKey: .device)
        try c.encode(reason, forKey: .reason)
    }
}
