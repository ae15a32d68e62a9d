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
    /// The device a transfer went to did not confirm that it started in time (`transfer_confirm`):
    /// playback went back to the device it came from, or paused.
    case transferFailed = "transfer_failed"

    /// The sentence shown to the person on the device that lost the lease.
    public var message: String {
        switch self {
        case .takenOver: "Playback paused: you started playing on another device"
        case .transferred: "Playback moved to another device"
        case .expired: "Playback paused: this device was away for too long"
        case .released: "Playback released"
        case .transferFailed: "Playback went back: this device did not start in time"
        }
    }
}

/// A change of the active device: who lost it, who got it, and the new epoch.
public struct LeaseChange: Codable, Sendable, Equatable {
    public var epoch: Int64
    public var revoked: String?
    public var granted: String?
    public var reason: LeaseReason
    /// Set when the new holder must confirm that it started (server ms): see `Playback.PendingTransfer`.
    public var confirmBy: Int64?

    public init(epoch: Int64, revoked: String?, granted: String?, reason: LeaseReason, confirmBy: Int64? = nil) {
        self.epoch = epoch
        self.revoked = revoked
        self.granted = granted
        self.reason = reason
        self.confirmBy = confirmBy
    }
}
