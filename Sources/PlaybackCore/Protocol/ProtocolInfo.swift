/// Constants of wire protocol v1 shared by the server and clients.
public enum ProtocolInfo {
    public static let version = "1"
    /// Default limit for one frame and for one reassembled message, inclusive.
    public static let maxMessageBytes = 65_536
    public static let heartbeatMs: Int64 = 15_000
    public static let messagesPerSecond = 100
    public static let messageBurst = 200
    /// Malformed messages in a row before the connection is closed with 1008.
    public static let malformedLimit = 10
    public static let helloTimeoutMs: Int64 = 10_000
    public static let graceMs: Int64 = 10_000
    public static let idempotencyWindowMs: Int64 = 600_000
    /// The longest request id (a message's `id`, REST's `Idempotency-Key`), in UTF-8 bytes: each
    /// is remembered for `idempotencyWindowMs`, so their size is bounded.
    public static let maxRequestIDBytes = 128

    /// Whether `id` may be used as a request id: 1–128 bytes.
    public static func isValidRequestID(_ id: String) -> Bool { !id.isEmpty && id.utf8.count <= maxRequestIDBytes }
    /// The HS256 secret the daemon and `device-sim` use when none is configured. Public on
    /// purpose: fine on a laptop, never in production (the daemon warns loudly).
    public static let developmentJWTSecret = "playback-sync-development-secret-do-not-use-in-production"
}

/// WebSocket close codes the server uses.
public enum CloseCode: UInt16, Sendable, CaseIterable {
    case normal = 1000
    case goingAway = 1001
    case protocolError = 1002
    case unsupportedData = 1003
    case invalidPayload = 1007
    case policyViolation = 1008
    case messageTooBig = 1009
    case internalError = 1011
    case tryAgainLater = 1013
    case replaced = 4001
    case tooSlow = 4008
    case rateLimited = 4029
}
