/// Settings shared by the engines.
public struct EngineConfiguration: Sendable {
    /// How long an active device that vanished keeps the lease.
    public var graceMs: Int64 = ProtocolInfo.graceMs
    /// Most devices of one user connected at once.
    public var maxDevicesPerUser = 100
    /// How long a request id is remembered.
    public var idempotencyWindowMs: Int64 = ProtocolInfo.idempotencyWindowMs
    /// Most request ids remembered per user inside the window: a new id beyond it is refused with
    /// `rate_limited` (no id is forgotten before the window ends).
    public var idempotencyCapacity = 10_000
    /// How long an offline device stays listed.
    public var deviceRetentionMs: Int64 = 24 * 3_600_000
    public var limits = PlaybackLimits()
    /// How long a playback restored after the storage lost it waits before anything commits on
    /// top of it (commands meanwhile get `unavailable` with a retry hint), so that a node holding a
    /// newer snapshot can put that in its place: the newest snapshot any node holds wins. 0 for
    /// the memory engine (one process holds every snapshot there is).
    public var restoreSettleMs: Int64 = 1_000
    /// Past this much lag on the bus (the time a change takes to come back from Redis to this
    /// node), new commands are refused with `unavailable` and a retry hint instead of being
    /// acknowledged while the devices fall behind: load is shed before Redis drops a subscription
    /// for its output buffer. 0 never sheds.
    public var maxBusLagMs: Int64 = 500
    /// A user with no device present, no lease and no change for this long leaves Redis, once
    /// PostgreSQL holds their snapshot (restored from it on the next access); 0 keeps everyone.
    /// Needs PostgreSQL: without it the daemon keeps every user.
    public var idleTTLMs: Int64 = 0

    public init() {}
}
