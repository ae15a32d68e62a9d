/// A rejected command or message: a protocol error code, a human-readable message and the
/// details the protocol attaches to some codes (the current `version` or `epoch`, `retry_after_ms`).
public struct PlaybackError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The protocol's error codes.
    public enum Code: String, Codable, Sendable, CaseIterable {
        case badRequest = "bad_request"
        case unknownOp = "unknown_op"
        case versionConflict = "version_conflict"
        case noActiveDevice = "no_active_device"
        case deviceNotFound = "device_not_found"
        case deviceOffline = "device_offline"
        case trackNotFound = "track_not_found"
        case entryNotFound = "entry_not_found"
        case unavailableInRegion = "unavailable_in_region"
        case staleEpoch = "stale_epoch"
        case queueFull = "queue_full"
        case rateLimited = "rate_limited"
        case unavailable
        case `internal`

        /// Transient errors are not remembered for idempotency: a retry with the same id is tried afresh.
        public var isTransient: Bool {
            self == .rateLimited || self == .unavailable || self == .internal
        }
    }

    public var code: Code
    public var message: String
    /// The current version, with `version_conflict`.
    public var version: Int64?
    /// The current epoch, with `stale_epoch`.
    public var epoch: Int64?
    /// How long to wait, with `rate_limited`.
    public var retryAfterMs: Int64?

    public init(
        _ code: Code, _ message: String, version: Int64? = nil, epoch: Int64? = nil, retryAfterMs: Int64? = nil
    ) {
        self.code = code
        self.message = message
        self.version = version
        self.epoch = epoch
        self.retryAfterMs = retryAfterMs
    }

    public var description: String { "\(code.rawValue): \(message)" }

    public static func badRequest(_ message: String) -> PlaybackError { PlaybackError(.badRequest, message) }

    public static func versionConflict(current: Int64) -> PlaybackError {
        PlaybackError(.versionConflict, "the state is at version \(current)", version: current)
    }

    public static func staleEpoch(current: Int64) -> PlaybackError {
        PlaybackError(.staleEpoch, "this device does not hold the lease at epoch \(current)", epoch: current)
    }

    public static func trackNotFound(_ id: String) -> PlaybackError {
        PlaybackError(.trackNotFound, "no track with id \(id)")
    }

    public static func entryNotFound(_ entry: String) -> PlaybackError {
        PlaybackError(.entryNotFound, "no upcoming entry \(entry)")
    }
}
