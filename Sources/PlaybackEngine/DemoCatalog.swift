/// The built-in catalog of the embedded engine: 300 deterministic tracks (`t0001`…`t0300`),
/// 30 albums of 10 (`a01`…`a30`), 5 playlists (`p1`…`p5`), and 6 tracks licensed only in
/// Sweden and Norway (`t0013`, `t0063`, …, every 50th from 13).
///
/// `make(trackCount:)` builds larger ones the same way (`playback-syncd seed-catalog` loads
/// 10,000 tracks into PostgreSQL); their first 300 tracks are the built-in ones.
public enum DemoCatalog {
    public static let trackCount = 300
    public static let restrictedCountries: Set<String> = ["SE", "NO"]

    public static let shared: StaticCatalog = make()

    /// The album of track `number` (1-based): `a01`, `a02`, …
    public static func albumID(ofTrack number: Int) -> String { albumID((number - 1) / 10 + 1) }

    static func albumID(_ album: Int) -> String { album < 10 ? "a0\(album)" : "a\(album)" }

    public static func trackID(_ number: Int) -> String {
        "t" + String(repeating: "0", count: max(0, 4 - String(number).count)) + String(number)
    }

    static let artists = [
        "The Aurora Set", "Mira Vale", "Kettle & Co", "Northbound", "Lumen Drive", "Orchid Hall", "Paper Comets",
        "Saltwater Radio", "The Quiet Hours", "Velvet Engines", "Juniper Lane", "Static Bloom", "Harbour Lights",
        "Copper Fields", "Nina Solberg", "Tall Pines", "Glass Atlas", "Marlow Street", "The Night Ferries",
        "Silver Alder", "Ola Brekke", "Cloud Avenue", "Amber Theory", "Low Tide Club", "Polar Echo",
        "Red Kite", "Sora Minami", "The Open Doors", "Winter Arcade", "Fen & Field",
    ]
    static let adjectives = [
        "Northern", "Slow", "Golden", "Quiet", "Electric", "Paper", "Hidden", "Endless", "Bright", "Hollow",
        "Silver", "Late", "Wild", "Gentle", "Broken", "Distant", "Blue", "Open", "Warm", "Falling",
    ]
    static let nouns = [
        "Lights", "Morning", "Harbour", "Rivers", "Signals", "Stairs", "Summer", "Engines", "Rooms", "Skies",
        "Letters", "Tides", "Streets", "Gardens", "Echoes",
    ]

    public static func make(trackCount: Int = trackCount) -> StaticCatalog {
        var rng = SplitMix64(seed: 20_261_126)
        var tracks: [Track] = []
        var restrictions: [String: Set<String>] = [:]
        for number in 1...trackCount {
            let title = "\(adjectives[Int(rng.next() % UInt64(adjectives.count))]) \(nouns[Int(rng.next() % UInt64(nouns.count))])"
            let artist = artists[(number - 1) / 10 % artists.count]
            let duration = Int64(120_000 + rng.next() % 240_000) / 1_000 * 1_000
            let id = trackID(number)
            tracks.append(Track(id: id, title: title, artist: artist, durationMs: duration))
            if number % 50 == 13 { restrictions[id] = restrictedCountries }
        }
        var contexts: [PlaybackContext: [String]] = [:]
        for album in 1...max(1, trackCount / 10) {
            contexts[PlaybackContext(kind: "album", id: albumID(album))] = ((album - 1) * 10 + 1...min(album * 10, trackCount)).map(trackID)
        }
        for playlist in 1...5 {
            contexts[PlaybackContext(kind: "playlist", id: "p\(playlist)")] =
                stride(from: playlist, through: trackCount, by: 7).prefix(25).map(trackID)
        }
        return StaticCatalog(tracks: tracks, contexts: contexts, restrictions: restrictions)
    }
}
