/// The kinds of device a client may announce in `hello`.
public enum DeviceKind: String, Codable, Sendable, CaseIterable {
    case computer, smartphone, speaker, tv, web, car, other
}

/// A device as listed in `welcome` and `devices` messages.
public struct DeviceInfo: Codable, Sendable, Hashable {
    public var id: String
    public var name: String
    public var kind: DeviceKind
    public var online: Bool
    public var active: Bool
    /// Server time (ms since the epoch) the device was last connected.
    public var lastSeen: Int64
    /// The device's own volume (the state's `volume` for the active device); absent until the
    /// device had one.
    public var volumePercent: Int?
    /// The WebSocket round trip (ping → pong) of the device's connection, in ms, as last measured;
    /// absent while the device is offline or not yet measured.
    public var rttMs: Int?
    /// What the device said it can do in its `hello` (`transfer_confirm`); absent when nothing.
    public var capabilities: [String]?

    public init(
        id: String, name: String, kind: DeviceKind, online: Bool, active: Bool, lastSeen: Int64, volumePercent: Int? = nil,
        rttMs: Int? = nil, capabilities: [String]? = nil
    ) {
        self.id = id
        self.name = name
        self.kind = kind
        self.online = online
        self.active = active
        self.lastSeen = lastSeen
        self.volumePercent = volumePercent
        self.rttMs = rttMs
        self.capabilities = capabilities?.isEmpty == true ? nil : capabilities
    }

    enum CodingKeys: String, CodingKey {
        case id, name, kind, online, active, capabilities
        case lastSeen = "last_seen"
        case volumePercent = "volume_percent"
        case rttMs = "rtt_ms"
    }
}

/// Rules for device identifiers, shared by the server and clients.
public enum DeviceID {
    public static let maxLength = 64
    public static let maxNameLength = 128

    /// 1–64 characters of `[A-Za-z0-9._-]`.
    public static func isValid(_ id: String) -> Bool {
        let utf8 = id.utf8
        guard !utf8.isEmpty, utf8.count <= maxLength else { return false }
        return utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
                return true
            default:
                return false
            }
        }
    }
}
