import Foundation
import Hummingbird
import PlaybackEngine

/// The REST shape of the original system design (`/api/playback/*`), for clients written against
/// it: each endpoint is a thin mapping onto the same commands, versions, idempotency
/// (`Idempotency-Key`, `If-Match`) and errors as `/v1/me/player`. Positions are in seconds (any
/// JSON number), as the design has them. The daemon keeps devices in sync and does not serve
/// audio: `play` answers `manifest_url: null` and says so.
struct SeedRoutes {
    let player: PlayerRoutes

    static let noAudio = "playback-syncd keeps devices in sync and does not serve audio: fetch the stream from your media service"

    func register(on router: Router<BasicRequestContext>) {
        router.post("/api/playback/play") { request, _ in
            await player.respond(request) { user, request in
                let body = try await PlayerRoutes.decodeIfPresent(SeedPlay.self, from: &request) ?? SeedPlay()
                let positionMs = try body.position.map { try Self.milliseconds($0, "position") }
                let play = Command.Play(
                    trackID: body.songID, context: try body.context.map(Self.context), positionMs: positionMs, device: body.deviceID)
                let receipt = try await player.run(.play(play), user: user, request: request)
                return try RESTResponse.json(
                    SeedPlayed(version: receipt.version, currentPosition: Double(positionMs ?? 0) / 1_000, manifestURL: nil, audio: Self.noAudio),
                    version: receipt.version)
            }
        }
        router.post("/api/playback/pause") { request, _ in
            await player.respond(request) { user, request in
                // `device_id` and `position` are accepted as the design sends them; the server's
                // position is the one that counts (the active device reports its progress).
                _ = try await PlayerRoutes.decodeIfPresent(SeedPause.self, from: &request)
                let receipt = try await player.run(.pause, user: user, request: request)
                return try await done(user, receipt)
            }
        }
        router.post("/api/playback/seek") { request, _ in
            await player.respond(request) { user, request in
                let body = try await PlayerRoutes.decode(SeedSeek.self, from: &request)
                let positionMs = try Self.milliseconds(body.position, "position")
                if let song = body.songID {
                    let (state, _) = try await player.snapshot(user)
                    guard state.track?.id == song else {
                        throw PlaybackError(.versionConflict, "\(song) is not the current track (\(state.track?.id ?? "none"))", version: state.version)
                    }
                }
                let receipt = try await player.run(.seek(positionMs: positionMs), user: user, request: request)
                return try await done(user, receipt)
            }
        }
        router.post("/api/playback/transfer") { request, _ in
            await player.respond(request) { user, request in
                let body = try await PlayerRoutes.decode(SeedTransfer.self, from: &request)
                let receipt = try await player.run(.transfer(device: body.device, play: nil), user: user, request: request)
                return try await done(user, receipt)
            }
        }
        for path in ["/api/playback/update", "/api/playback/report"] {
            router.post(RouterPath(stringLiteral: path)) { request, _ in
                await player.respond(request) { user, request in
                    try await report(user: user, request: &request)
                }
            }
        }
        router.get("/api/playback/current") { request, _ in
            await player.respond(request) { user, _ in
                let (state, devices) = try await player.snapshot(user)
                return try RESTResponse.json(SeedCurrent(state: state, devices: devices, now: ServerClock.nowMs()), version: state.version)
            }
        }
    }

    /// `{success, version, position}` after a command: the position (seconds) the state is at now.
    private func done(_ user: UserIdentity, _ receipt: Receipt) async throws -> Response {
        let (state, _) = try await player.snapshot(user)
        let position = Double(state.position(at: ServerClock.nowMs())) / 1_000
        return try RESTResponse.json(SeedDone(success: true, version: receipt.version, position: position), version: receipt.version)
    }

    /// Progress from a device: applied only when it is the active device, at its current epoch
    /// (the same fence as a WebSocket `report`); from any other device `409 stale_epoch`.
    private func report(user: UserIdentity, request: inout Request) async throws -> Response {
        let body = try await PlayerRoutes.decode(SeedReport.self, from: &request)
        let positionMs = try Self.milliseconds(body.position, "position")
        let (state, _) = try await player.snapshot(user)
        guard let active = state.activeDevice, active == body.deviceID else {
            throw PlaybackError(.staleEpoch, "\(body.deviceID) is not the active device; the report was not applied", version: state.version)
        }
        guard let song = body.songID ?? state.track?.id else { throw PlaybackError(.noActiveDevice, "nothing is loaded") }
        let input = Input.report(epoch: state.epoch, positionMs: positionMs, isPlaying: body.isPlaying ?? state.isPlaying, trackID: song)
        let receipt = try await player.engine.submit(Submission(user: user, input: input, device: body.deviceID)).get()
        return try RESTResponse.json(SeedDone(success: true, version: receipt.version, position: Double(positionMs) / 1_000), version: receipt.version)
    }

    /// Seconds (a JSON number) to whole milliseconds.
    static func milliseconds(_ seconds: Double, _ name: String) throws(PlaybackError) -> Int64 {
        guard seconds.isFinite, seconds >= 0, seconds < 1e9 else { throw .badRequest("\(name) must be a number of seconds from 0") }
        return Int64((seconds * 1_000).rounded())
    }

    /// `playlist:456` → a context of kind `playlist` and id `456`.
    static func context(_ text: String) throws(PlaybackError) -> PlaybackContext {
        let parts = text.split(separator: ":", maxSplits: 1)
        guard let kind = parts.first, !kind.isEmpty, parts.count == 2, !parts[1].isEmpty else {
            throw .badRequest("context must be kind:id, e.g. playlist:456")
        }
        return PlaybackContext(kind: String(kind), id: String(parts[1]))
    }
}

struct SeedPlay: Decodable {
    var songID: String?
    var deviceID: String?
    var context: String?
    var position: Double?

    init() {}

    enum CodingKeys: String, CodingKey {
        case context, position
        case songID = "song_id"
        case deviceID = "device_id"
    }
}

struct SeedPause: Decodable {
    var deviceID: String?
    var position: Double?

    enum CodingKeys: String, CodingKey {
        case position
        case deviceID = "device_id"
    }
}

struct SeedSeek: Decodable {
    var songID: String?
    var position: Double

    enum CodingKeys: String, CodingKey {
        case position
        case songID = "song_id"
    }
}

struct SeedTransfer: Decodable {
    var device: String
}

struct SeedReport: Decodable {
    var songID: String?
    var position: Double
    var deviceID: String
    var isPlaying: Bool?

    enum CodingKeys: String, CodingKey {
        case position
        case songID = "song_id"
        case deviceID = "device_id"
        case isPlaying = "is_playing"
    }
}

struct SeedPlayed: Encodable {
    var version: Int64
    var currentPosition: Double
    var manifestURL: String?
    var audio: String

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(version, forKey: .version)
        try container.encode(currentPosition, forKey: .currentPosition)
        try container.encodeNil(forKey: .manifestURL)
        try container.encode(audio, forKey: .audio)
    }

    enum CodingKeys: String, CodingKey {
        case version, audio
        case currentPosition = "current_position"
        case manifestURL = "manifest_url"
    }
}

struct SeedDone: Encodable {
    var success: Bool
    var version: Int64
    var position: Double
}

/// `GET /api/playback/current`: `{song, position, is_playing, device, queue}` with `version`.
struct SeedCurrent: Encodable {
    struct Song: Encodable {
        var id: String
        var title: String
        var artist: String
        var duration: Double
    }

    struct Device: Encodable {
        var id: String
        var name: String
        var type: String
    }

    var song: Song?
    var position: Double
    var isPlaying: Bool
    var device: Device?
    var queue: [String]
    var version: Int64

    init(state: PlayerState, devices: [DeviceInfo], now: Int64) {
        song = state.track.map { Song(id: $0.id, title: $0.title, artist: $0.artist, duration: Double($0.durationMs) / 1_000) }
        position = Double(state.position(at: now)) / 1_000
        isPlaying = state.isPlaying
        device = state.activeDevice.map { id in
            let info = devices.first { $0.id == id }
            return Device(id: id, name: info?.name ?? id, type: info?.kind.rawValue ?? DeviceKind.other.rawValue)
        }
        queue = (state.queue ?? []).map(\.track.id)
        version = state.version
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(song, forKey: .song)
        try container.encode(position, forKey: .position)
        try container.encode(isPlaying, forKey: .isPlaying)
        try container.encode(device, forKey: .device)
        try container.encode(queue, forKey: .queue)
        try container.encode(version, forKey: .version)
    }

    enum CodingKeys: String, CodingKey {
        case song, position, device, queue, version
        case isPlaying = "is_playing"
    }
}
