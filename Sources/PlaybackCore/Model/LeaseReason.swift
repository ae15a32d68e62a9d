/// Why a device lost the lease.
public enum LeaseReason: String, Codable, Sendable, CaseIterable {
    /// `transfer` moved playback to another device.
    case transferred
    /// Another device started playback (`play`/`resume` naming it).
    case takenOver = "taken_over"
    /// The holder went away and did not come back within the grace period.
    case expired
    /// The holder released the lease (clean close or `release`).
    case released

    /// The sentence shown to the person on the device that lost the lease.
    public var message: String {
        switch self {
        case .takenOver: "Playback paused: you started playing on another device"
        case .transferred: "Playback moved to another device"
        case .expired: "Playback paused: this device was away for too long"
        case .released: "Playback released"
        }
    }
}

/// A change of the active device: who lost it, who got it, and the new epoch.
public struct LeaseChange: Codable, Sendable, Equatable {
    public var epoch: Int64
    public var revoked: String?
    public var granted: String?
    public var reason: LeaseReason

    public init(epoch: Int64, revoked: String?, granted: String?, reason: LeaseReason) {
        self.epoch = epoch
        self.revoked = revoked
        self.granted = granted
        self.reason = reason
    }
}
