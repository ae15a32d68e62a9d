/// A message the server sends to a device.
public enum ServerMessage: Sendable, Equatable {
    case welcome(Welcome)
    case ack(Ack)
    case error(ErrorReply)
    case state(StateEvent)
    case leaseRevoked(LeaseRevoked)
    case leaseGranted(LeaseGranted)
    case clock(t0: JSONNumber, serverTime: Int64)
    case devices([DeviceInfo])
    case history(History)

    /// The answer to `hello`: the session, the limits, the devices and the full state.
    public struct Welcome: Codable, Sendable, Equatable {
        public struct Limits: Codable, Sendable, Equatable {
            public var maxMessageBytes: Int
            public var messagesPerS: Int

            public init(maxMessageBytes: Int, messagesPerS: Int) {
                self.maxMessageBytes = maxMessageBytes
                self.messagesPerS = messagesPerS
            }

            enum CodingKeys: String, CodingKey {
                case maxMessageBytes = "max_message_bytes"
                case messagesPerS = "messages_per_s"
            }
        }

        public var session: String
        public var serverTime: Int64
        public var heartbeatMs: Int64
        public var limits: Limits
        public var devices: [DeviceInfo]
        public var state: PlayerState
        /// False exactly when the hello's `last_seen` equals the current epoch and version.
        public var changed: Bool

        public init(
            session: String, serverTime: Int64, heartbeatMs: Int64, limits: Limits, devices: [DeviceInfo],
            state: PlayerState, changed: Bool
        ) {
            self.session = session
            self.serverTime = serverTime
            self.heartbeatMs = heartbeatMs
            self.limits = limits
            self.devices = devices
            self.state = state
            self.changed = changed
        }

        enum CodingKeys: String, CodingKey {
            case session, limits, devices, state, changed
            case serverTime = "server_time"
            case heartbeatMs = "heartbeat_ms"
        }
    }

    /// A command (or `release`/`auth`) was accepted; `version` is the state's version after it.
    public struct Ack: Codable, Sendable, Equatable {
        public var id: String
        public var version: Int64
        /// The new entry, for `queue_add`.
        public var entry: String?

        public init(id: String, version: Int64, entry: String? = nil) {
            self.id = id
            self.version = version
            self.entry = entry
        }
    }

    /// A rejected message; details of some codes are top-level fields.
    public struct ErrorReply: Codable, Sendable, Equatable {
        public var id: String?
        public var code: PlaybackError.Code
        public var message: String
        public var version: Int64?
        public var epoch: Int64?
        public var retryAfterMs: Int64?

        public init(id: String?, error: PlaybackError) {
            self.id = id
            self.code = error.code
            self.message = error.message
            self.version = error.version
            self.epoch = error.epoch
            self.retryAfterMs = error.retryAfterMs
        }

        public var error: PlaybackError {
            PlaybackError(code, message, version: version, epoch: epoch, retryAfterMs: retryAfterMs)
        }

        enum CodingKeys: String, CodingKey {
            case id, code, message, version, epoch
            case retryAfterMs = "retry_after_ms"
        }
    }

    /// What made a state: the op, the device concerned (null when none) and the request id (null when none).
    public struct Cause: Codable, Sendable, Equatable {
        public var op: String
        public var device: String?
        public var request: String?

        public init(op: String, device: String?, request: String?) {
            self.op = op
            self.device = device
            self.request = request
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(op, forKey: .op)
            try c.encode(device, forKey: .device)
            try c.encode(request, forKey: .request)
        }

        enum CodingKeys: String, CodingKey { case op, device, request }
    }

    /// A new version of the player state, broadcast to all the user's devices.
    public struct StateEvent: Codable, Sendable, Equatable {
        public var state: PlayerState
        public var cause: Cause

        public init(state: PlayerState, cause: Cause) {
            self.state = state
            self.cause = cause
        }
    }

    /// Sent to the device that lost the lease: stop playing now.
    public struct LeaseRevoked: Codable, Sendable, Equatable {
        public var epoch: Int64
        public var reason: LeaseReason
        /// The new holder, null when nobody holds it.
        public var by: String?
        public var message: String

        public init(epoch: Int64, reason: LeaseReason, by: String?, message: String? = nil) {
            self.epoch = epoch
            self.reason = reason
            self.by = by
            self.message = message ?? reason.message
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(epoch, forKey: .epoch)
            try c.encode(reason, forKey: .reason)
            try c.encode(by, forKey: .by)
            try c.encode(message, forKey: .message)
        }

        enum CodingKeys: String, CodingKey { case epoch, reason, by, message }
    }

    /// Sent to the device that got the lease: start at `state`'s position.
    public struct LeaseGranted: Codable, Sendable, Equatable {
        public var epoch: Int64
        public var state: PlayerState
        /// For a device that declared `transfer_confirm`, taking over by a `transfer` that plays:
        /// the server time (ms) by which it must report that it plays at `epoch`, else playback
        /// goes back (`transfer_failed`). Null otherwise.
        public var confirmBy: Int64?

        public init(epoch: Int64, state: PlayerState, confirmBy: Int64? = nil) {
            self.epoch = epoch
            self.state = state
            self.confirmBy = confirmBy
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            epoch = try c.decode(Int64.self, forKey: .epoch)
            state = try c.decode(PlayerState.self, forKey: .state)
            confirmBy = try c.decodeIfPresent(Int64.self, forKey: .confirmBy)
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(confirmBy, forKey: .confirmBy)
            try c.encode(epoch, forKey: .epoch)
            try c.encode(state, forKey: .state)
        }

        enum CodingKeys: String, CodingKey {
            case epoch, state
            case confirmBy = "confirm_by"
        }
    }

    /// The wire `type` of the message.
    public var type: String {
        switch self {
        case .welcome: "welcome"
        case .ack: "ack"
        case .error: "error"
        case .state: "state"
        case .leaseRevoked: "lease_revoked"
        case .leaseGranted: "lease_granted"
        case .clock: "clock"
        case .devices: "devices"
        case .history: "history"
        }
    }

    /// The answer to `history`: recently played tracks, newest first.
    public struct History: Codable, Sendable, Equatable {
        public var id: String?
        public var items: [PlayedItem]

        public init(id: String?, items: [PlayedItem]) {
            self.id = id
            self.items = items
        }
    }
}

extension ServerMessage: Codable {
    enum CodingKeys: String, CodingKey {
        case type, t0, devices
        case serverTime = "server_time"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let type = try c.decode(String.self, forKey: .type)
        switch type {
        case "welcome": self = .welcome(try Welcome(from: decoder))
        case "ack": self = .ack(try Ack(from: decoder))
        case "error": self = .error(try ErrorReply(from: decoder))
        case "state": self = .state(try StateEvent(from: decoder))
        case "lease_revoked": self = .leaseRevoked(try LeaseRevoked(from: decoder))
        case "lease_granted": self = .leaseGranted(try LeaseGranted(from: decoder))
        case "clock":
            self = .clock(t0: try c.decode(JSONNumber.self, forKey: .t0), serverTime: try c.decode(Int64.self, forKey: .serverTime))
        case "devices": self = .devices(try c.decode([DeviceInfo].self, forKey: .devices))
        case "history": self = .history(try History(from: decoder))
        default:
            throw DecodingError.dataCorruptedError(forKey: .type, in: c, debugDescription: "unknown message type \(type)")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(type, forKey: .type)
        switch self {
        case .welcome(let welcome): try welcome.encode(to: encoder)
        case .ack(let ack): try ack.encode(to: encoder)
        case .error(let error): try error.encode(to: encoder)
        case .state(let event): try event.encode(to: encoder)
        case .leaseRevoked(let revoked): try revoked.encode(to: encoder)
        case .leaseGranted(let granted): try granted.encode(to: encoder)
        case .clock(let t0, let serverTime):
            try c.encode(t0, forKey: .t0)
            try c.encode(serverTime, forKey: .serverTime)
        case .devices(let devices): try c.encode(devices, forKey: .devices)
        case .history(let history): try history.encode(to: encoder)
        }
    }
}
