/// A message a device sends to the server.
public enum ClientMessage: Sendable, Equatable {
    case hello(Hello)
    case command(CommandRequest)
    case report(Report)
    case trackEnded(TrackEnded)
    case clock(t0: JSONNumber)
    case release(id: String?)
    case auth(token: String, id: String?)
    /// Recently played tracks, newest first (`limit` 1–50, default 20).
    case history(id: String?, limit: Int)

    /// The first message of a session: who the device is and what it saw last.
    public struct Hello: Codable, Sendable, Equatable {
        public struct Device: Codable, Sendable, Equatable {
            public var id: String
            public var name: String
            public var kind: DeviceKind

            public init(id: String, name: String, kind: DeviceKind) {
                self.id = id
                self.name = name
                self.kind = kind
            }
        }

        public struct LastSeen: Codable, Sendable, Equatable {
            public var epoch: Int64
            public var version: Int64

            public init(epoch: Int64, version: Int64) {
                self.epoch = epoch
                self.version = version
            }
        }

        /// What the connection is: a device (the default), or a remote control, which sees and
        /// changes the user's playback but plays nothing: it is never listed, never active, and its
        /// commands come from no device (as REST's do).
        public enum Role: String, Codable, Sendable, Equatable {
            case device, remote
        }

        public var device: Device
        public var lastSeen: LastSeen?
        /// What the device can do beyond the base protocol (`Capability`); unknown names are ignored.
        public var capabilities: [String]?
        /// Absent: a device.
        public var role: Role?

        public init(device: Device, lastSeen: LastSeen? = nil, capabilities: [String]? = nil, role: Role? = nil) {
            self.device = device
            self.lastSeen = lastSeen
            self.capabilities = capabilities
            self.role = role
        }

        public var isRemote: Bool { role == .remote }

        /// The capabilities this server knows, each once, in a stable order.
        public var knownCapabilities: [String] {
            Capability.all.filter { capabilities?.contains($0) == true }
        }

        enum CodingKeys: String, CodingKey {
            case device, capabilities, role
            case lastSeen = "last_seen"
        }
    }

    /// A command with its request id and optional version precondition.
    public struct CommandRequest: Sendable, Equatable {
        public var id: String
        public var command: Command
        public var ifVersion: Int64?

        public init(id: String, command: Command, ifVersion: Int64? = nil) {
            self.id = id
            self.command = command
            self.ifVersion = ifVersion
        }
    }

    /// Progress from the active device.
    public struct Report: Codable, Sendable, Equatable {
        public var id: String?
        public var epoch: Int64
        public var positionMs: Int64
        public var isPlaying: Bool
        public var trackID: String

        public init(id: String? = nil, epoch: Int64, positionMs: Int64, isPlaying: Bool, trackID: String) {
            self.id = id
            self.epoch = epoch
            self.positionMs = positionMs
            self.isPlaying = isPlaying
            self.trackID = trackID
        }

        enum CodingKeys: String, CodingKey {
            case id, epoch
            case positionMs = "position_ms"
            case isPlaying = "is_playing"
            case trackID = "track_id"
        }
    }

    /// The active device reached the natural end of a track.
    public struct TrackEnded: Codable, Sendable, Equatable {
        public var id: String?
        public var epoch: Int64
        public var trackID: String

        public init(id: String? = nil, epoch: Int64, trackID: String) {
            self.id = id
            self.epoch = epoch
            self.trackID = trackID
        }

        enum CodingKeys: String, CodingKey {
            case id, epoch
            case trackID = "track_id"
        }
    }

    /// The wire `type` of the message.
    public var type: String {
        switch self {
        case .hello: "hello"
        case .command: "command"
        case .report: "report"
        case .trackEnded: "track_ended"
        case .clock: "clock"
        case .release: "release"
        case .auth: "auth"
        case .history: "history"
        }
    }

    /// The request id the answer to this message echoes, when it has one.
    public var requestID: String? {
        switch self {
        case .command(let request): request.id
        case .report(let report): report.id
        case .trackEnded(let ended): ended.id
        case .release(let id), .auth(_, let id), .history(let id, _): id
        case .hello, .clock: nil
        }
    }
}

extension ClientMessage: Codable {
    enum CodingKeys: String, CodingKey {
        case type, id, op, args, token, t0, limit
        case ifVersion = "if_version"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let type = try c.decode(String.self, forKey: .type)
        switch type {
        case "hello":
            let hello = try Hello(from: decoder)
            guard DeviceID.isValid(hello.device.id) else {
                throw MessageDecodingError(.badRequest, "device.id must be 1–64 characters of A-Z a-z 0-9 . _ -")
            }
            guard !hello.device.name.isEmpty, hello.device.name.count <= DeviceID.maxNameLength else {
                throw MessageDecodingError(.badRequest, "device.name must be 1–\(DeviceID.maxNameLength) characters")
            }
            if let capabilities = hello.capabilities {
                guard capabilities.count <= Capability.maxCount, capabilities.allSatisfy({ (1...Capability.maxLength).contains($0.utf8.count) }) else {
                    throw MessageDecodingError(
                        .badRequest, "capabilities holds at most \(Capability.maxCount) names of 1–\(Capability.maxLength) bytes")
                }
            }
            self = .hello(hello)
        case "command":
            let id = try Self.requestID(c.decode(String.self, forKey: .id))
            let opName = try c.decode(String.self, forKey: .op)
            guard let op = Command.Op(rawValue: opName) else {
                throw MessageDecodingError(.unknownOp, "unknown op \(opName)")
            }
            let command = try Command(op: op, args: c, key: .args)
            self = .command(CommandRequest(id: id, command: command, ifVersion: try c.decodeIfPresent(Int64.self, forKey: .ifVersion)))
        case "report":
            let report = try Report(from: decoder)
            _ = try report.id.map(Self.requestID)
            self = .report(report)
        case "track_ended":
            let ended = try TrackEnded(from: decoder)
            _ = try ended.id.map(Self.requestID)
            self = .trackEnded(ended)
        case "clock": self = .clock(t0: try c.decode(JSONNumber.self, forKey: .t0))
        case "release": self = .release(id: try c.decodeIfPresent(String.self, forKey: .id).map(Self.requestID))
        case "auth":
            self = .auth(token: try c.decode(String.self, forKey: .token), id: try c.decodeIfPresent(String.self, forKey: .id).map(Self.requestID))
        case "history":
            let limit = try c.decodeIfPresent(Int.self, forKey: .limit) ?? PlayedItem.defaultLimit
            guard (1...PlayedItem.maxLimit).contains(limit) else {
                throw MessageDecodingError(.badRequest, "limit must be an integer from 1 to \(PlayedItem.maxLimit)")
            }
            self = .history(id: try c.decodeIfPresent(String.self, forKey: .id).map(Self.requestID), limit: limit)
        default:
            throw MessageDecodingError(.badRequest, "unknown message type \(type)")
        }
    }

    /// A request id within `ProtocolInfo.maxRequestIDBytes`.
    private static func requestID(_ id: String) throws -> String {
        guard ProtocolInfo.isValidRequestID(id) else {
            throw MessageDecodingError(.badRequest, "id must be 1 to \(ProtocolInfo.maxRequestIDBytes) bytes")
        }
        return id
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(type, forKey: .type)
        switch self {
        case .hello(let hello): try hello.encode(to: encoder)
        case .command(let request):
            try c.encode(request.id, forKey: .id)
            try c.encode(request.command.op, forKey: .op)
            try request.command.encodeArgs(into: &c, key: .args)
            try c.encodeIfPresent(request.ifVersion, forKey: .ifVersion)
        case .report(let report): try report.encode(to: encoder)
        case .trackEnded(let ended): try ended.encode(to: encoder)
        case .clock(let t0): try c.encode(t0, forKey: .t0)
        case .release(let id): try c.encodeIfPresent(id, forKey: .id)
        case .auth(let token, let id):
            try c.encode(token, forKey: .token)
            try c.encodeIfPresent(id, forKey: .id)
        case .history(let id, let limit):
            try c.encodeIfPresent(id, forKey: .id)
            try c.encode(limit, forKey: .limit)
        }
    }
}

/// A decoding failure that already knows its protocol error code (unknown op, invalid device id).
public struct MessageDecodingError: Error, Sendable {
    public var error: PlaybackError

    public init(_ code: PlaybackError.Code, _ message: String) {
        error = PlaybackError(code, message)
    }
}

/// What a device may declare in its `hello` beyond the base protocol.
public enum Capability {
    /// The device confirms that it started after a `transfer` gave it playback (a `report` that
    /// plays at the new epoch, before the grant's `confirm_by`); unconfirmed, playback goes back.
    public static let transferConfirm = "transfer_confirm"
    /// Every capability this server knows.
    public static let all = [transferConfirm]
    /// Bounds on the `capabilities` of a `hello`.
    public static let maxCount = 16
    public static let maxLength = 64
}
