/// One committed change of a user's playback, as it travels to the nodes holding the user's
/// devices: the new state, whether the queue changed, the lease change and the cause.
public struct PlaybackEvent: Codable, Sendable, Equatable {
    /// The full new state (with `queue`).
    public var state: PlayerState
    public var queueChanged: Bool
    public var lease: LeaseChange?
    public var cause: ServerMessage.Cause

    public init(state: PlayerState, queueChanged: Bool, lease: LeaseChange?, cause: ServerMessage.Cause) {
        self.state = state
        self.queueChanged = queueChanged
        self.lease = lease
        self.cause = cause
    }

    public init(_ transition: Transition, cause: ServerMessage.Cause) {
        self.init(
            state: transition.playback.playerState(includeQueue: true), queueChanged: transition.queueChanged,
            lease: transition.lease, cause: cause)
    }

    /// The messages this event means, in the order they must be sent: `lease_revoked` to the old
    /// holder and `lease_granted` to the new one before the `state` everybody gets.
    public var messages: (revoked: (device: String, message: EncodedMessage)?,
                          granted: (device: String, message: EncodedMessage)?,
                          state: EncodedMessage) {
        var revoked: (String, EncodedMessage)?
        var granted: (String, EncodedMessage)?
        if let lease {
            if let old = lease.revoked {
                revoked = (old, EncodedMessage(.leaseRevoked(.init(epoch: lease.epoch, reason: lease.reason, by: lease.granted))))
            }
            if let new = lease.granted {
                granted = (new, EncodedMessage(.leaseGranted(.init(epoch: lease.epoch, state: state, confirmBy: lease.confirmBy))))
            }
        }
        var broadcast = state
        if !queueChanged { broadcast.queue = nil }
        return (revoked, granted, EncodedMessage(.state(.init(state: broadcast, cause: cause))))
    }
}

/// A change ready to deliver: what the fan-out needs to know, and the messages encoded once.
/// Nodes pass it between them as bytes (`BusMessage`), so only the committing node encodes.
public struct PreparedEvent: Sendable {
    public var version: Int64
    public var epoch: Int64
    public var activeDevice: String?
    public var state: EncodedMessage
    public var revoked: (device: String, message: EncodedMessage)?
    public var granted: (device: String, message: EncodedMessage)?

    public init(
        version: Int64, epoch: Int64, activeDevice: String?, state: EncodedMessage,
        revoked: (device: String, message: EncodedMessage)?, granted: (device: String, message: EncodedMessage)?
    ) {
        self.version = version
        self.epoch = epoch
        self.activeDevice = activeDevice
        self.state = state
        self.revoked = revoked
        self.granted = granted
    }
}

extension PlaybackEvent {
    /// Encodes the messages once.
    public var prepared: PreparedEvent {
        let messages = self.messages
        return PreparedEvent(
            version: state.version, epoch: state.epoch, activeDevice: state.activeDevice, state: messages.state,
            revoked: messages.revoked, granted: messages.granted)
    }
}
