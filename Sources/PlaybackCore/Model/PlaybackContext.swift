/// Where playback came from: an album, a playlist, or an ad-hoc list of tracks (`kind == "list"`, `id == nil`).
public struct PlaybackContext: Codable, Sendable, Hashable {
    public var kind: String
    public var id: String?

    public init(kind: String, id: String?) {
        self.kind = kind
        self.id = id
    }

    /// The context `play {track_ids: [...]}` creates.
    public static let list = PlaybackContext(kind: "list", id: nil)

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(kind, forKey: .kind)
        try container.encode(id, forKey: .id)
    }

    enum CodingKeys: String, CodingKey { case kind, id }
}

extension PlaybackContext: CustomStringConvertible {
    public var description: String { id.map { "\(kind):\($0)" } ?? kind }
}
