/// Everything that can change a user's playback: commands from devices or REST, and the
/// signals only the active device or the server itself produce.
public enum Input: Sendable, Equatable {
    case command(Command)
    /// Progress from the active device, fenced by its epoch.
    case report(epoch: Int64, positionMs: Int64, isPlaying: Bool, trackID: String)
    /// The active device reached the natural end of `trackID`.
    case trackEnded(epoch: Int64, trackID: String)
    /// The sender gives up the lease (clean close or `release`).
    case release
    /// The server ends `device`'s lease after its grace period. `lostAt` is when the holder was
    /// last known connected: the position is frozen where it was then (not where the track got to
    /// by the end of the grace period); nil means now.
    case expire(device: String, lostAt: Int64? = nil)
    /// The server's check of a transfer's confirmation (`Playback.PendingTransfer`) at `epoch`: past
    /// its `confirm_by` and still unconfirmed, playback goes back (`transfer_failed`).
    case confirmDeadline(epoch: Int64)

    /// Whether it is a `transfer` (the only input that asks for a start's confirmation).
    public var isTransfer: Bool {
        if case .command(.transfer) = self { return true }
        return false
    }

    /// The `cause.op` of the state this input produces.
    public var causeOp: String {
        switch self {
        case .command(let command): command.op.rawValue
        case .report: "report"
        case .trackEnded: "track_ended"
        case .release: "released"
        case .expire: "expired"
        case .confirmDeadline: "transfer_failed"
        }
    }
}

/// Whether a device can be made active.
public enum DevicePresence: Sendable, Equatable {
    case online, offline
}

/// What the reducer may know of the world besides the state: time, who sent the input,
/// the user's country and devices, and a seed for shuffling. All of it is passed in, nothing is read.
public struct ReducerEnvironment: Sendable {
    /// Server time in ms since the Unix epoch.
    public var now: Int64
    /// The device that sent the input; nil for REST and the server itself.
    public var sender: String?
    /// The user's country, for licensing.
    public var country: String?
    /// The user's known devices; a device missing here is `device_not_found`.
    public var devices: [String: DevicePresence]
    public var randomSeed: UInt64
    /// The devices that declared `transfer_confirm`: a transfer to one of them waits for its start.
    public var confirmingDevices: Set<String>

    public init(
        now: Int64, sender: String? = nil, country: String? = nil, devices: [String: DevicePresence] = [:],
        randomSeed: UInt64 = 0, confirmingDevices: Set<String> = []
    ) {
        self.now = now
        self.sender = sender
        self.country = country
        self.devices = devices
        self.randomSeed = randomSeed
        self.confirmingDevices = confirmingDevices
    }
}

/// Bounds the reducer enforces.
public struct PlaybackLimits: Sendable {
    /// Most user-queued entries (`queue_full` past it).
    public var queueCapacity: Int
    /// Most tracks in one `play {track_ids}`.
    public var maxTracksPerPlay: Int
    /// How long a device that confirms its start (`transfer_confirm`) has to do so after a transfer.
    public var transferConfirmMs: Int64

    public init(queueCapacity: Int = 1000, maxTracksPerPlay: Int = 1000, transferConfirmMs: Int64 = 3_000) {
        self.queueCapacity = queueCapacity
        self.maxTracksPerPlay = maxTracksPerPlay
        self.transferConfirmMs = transferConfirmMs
    }
}

/// The result of applying an input: the new state and what to tell whom.
public struct Transition: Sendable, Equatable {
    public var playback: Playback
    /// False when the input changed nothing: no new version, no broadcast.
    public var changed: Bool
    /// Whether the upcoming entries changed (a `state` event then carries `queue`).
    public var queueChanged: Bool
    /// Set when the active device changed: send `lease_revoked`/`lease_granted` before the `state`.
    public var lease: LeaseChange?
    /// The new entry id, for `queue_add`'s ack.
    public var entry: String?
    /// Plays that ended with this input, for play history.
    public var finishedPlays: [PlayRecord] = []
}
