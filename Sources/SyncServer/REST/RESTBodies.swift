import Foundation
import HTTPTypes
import Hummingbird
import PlaybackEngine

/// `PUT /v1/me/player` body.
struct TransferBody: Decodable {
    var deviceIDs: [String]
    var play: Bool?

    enum CodingKeys: String, CodingKey {
        case play
        case deviceIDs = "device_ids"
    }
}

/// `PUT /v1/me/player/play` body.
struct PlayBody: Decodable {
    var trackIDs: [String]?
    var context: PlaybackContext?
    var positionMs: Int64?

    enum CodingKeys: String, CodingKey {
        case context
        case trackIDs = "track_ids"
        case positionMs = "position_ms"
    }
}

struct PlayerBody: Encodable {
    var state: PlayerState
    var devices: [DeviceInfo]
}

struct DevicesBody: Encodable {
    var devices: [DeviceInfo]
}

struct QueueBody: Encodable {
    var currentlyPlaying: Track?
    var queue: [QueueEntry]

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(currentlyPlaying, forKey: .currentlyPlaying)
        try container.encode(queue, forKey: .queue)
    }

    enum CodingKeys: String, CodingKey {
        case queue
        case currentlyPlaying = "currently_playing"
    }
}

struct CommandBody: Encodable {
    var version: Int64
    var entry: String?
}

struct TracksBody: Encodable {
    var tracks: [Track]
}

/// `GET /v1/me/player/recently-played`: newest first.
struct RecentlyPlayedBody: Encodable {
    var items: [PlayedItem]
}

/// JSON responses and errors of the REST API.
enum RESTResponse {
    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    /// A 200 JSON response; with `version`, an `ETag` for `If-Match`.
    static func json(_ body: some Encodable, version: Int64? = nil) throws -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let version { headers[.eTag] = "\"\(version)\"" }
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(body))))
    }

    static func status(for code: PlaybackError.Code) -> HTTPResponse.Status {
        switch code {
        case .badRequest, .unknownOp: .badRequest
        case .noActiveDevice, .deviceNotFound, .trackNotFound, .entryNotFound: .notFound
        case .versionConflict, .deviceOffline, .staleEpoch, .queueFull: .conflict
        case .unavailableInRegion: .init(code: 451, reasonPhrase: "Unavailable For Legal Reasons")
        case .rateLimited: .tooManyRequests
        case .unavailable: .serviceUnavailable
        case .internal: .internalServerError
        }
    }

    static func error(_ error: PlaybackError) -> Response {
        var headers: HTTPFields = [:]
        if let retryAfterMs = error.retryAfterMs { headers[.retryAfter] = String(max(1, (retryAfterMs + 999) / 1_000)) }
        if let version = error.version { headers[.eTag] = "\"\(version)\"" }
        return ErrorResponse.make(status: status(for: error.code), code: error.code.rawValue, message: error.message, headers: headers)
    }
}
