/// A playable track as devices see it: enough to show it and to do position math.
public struct Track: Codable, Sendable, Hashable {
    public var id: String
    public var title: String
    public var artist: String
    public var durationMs: Int64

    public init(id: String, title: String, artist: String, durationMs: Int64) {
        self.id = id
        self.title = title
        self.artist = artist
        self.durationMs = durationMs
    }

    enum CodingKeys: String, CodingKey {
        case id, title, artist
        case durationMs = "duration_ms"
    }
}
