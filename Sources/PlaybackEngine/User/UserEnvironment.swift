import Logging

/// What every user's playback on this node shares: the storage, the local devices, the rules.
struct UserEnvironment<Storage: PlaybackStorage>: Sendable {
    let storage: Storage
    let configuration: EngineConfiguration
    let timing: LeaseTiming
    let reducer: PlaybackReducer
    let durability: Durability
    let clock: @Sendable () -> Int64
    let logger: Logger
    let nodeID: String
    /// Where work that needs a task runs (owned by the engine's `run()`).
    let work: BackgroundWork
}

/// The lease's clock: how long it lives, how often it is renewed and checked, how long presence lasts.
struct LeaseTiming: Sendable {
    /// How long an active device that vanished keeps the lease.
    let graceMs: Int64
    /// The lease's TTL while its holder is connected (renewed three times per TTL, so two
    /// renewals may fail before it lapses); a lease whose node died expires after it.
    var leaseTTLMs: Int64 { max(graceMs, 2_000) }
    /// How often a local holder's lease is renewed.
    var renewMs: Int64 { leaseTTLMs / 3 }
    /// How often each user is kept up: lapsed leases expired, presence refreshed.
    var tickMs: Int64 { max(50, min(1_000, leaseTTLMs / 4)) }
    /// How long a device stays online without a refresh; refreshed every third of it. A node that
    /// dies leaves its devices listed online (not active: that is the lease) for at most this long.
    var presenceTTLMs: Int64 { max(15_000, 3 * tickMs + 2_000) }
    /// How long a node counts as alive after it last said so (twice per tick): as long as a lease
    /// it renews, so that a node starved for a while is not taken for dead before its leases
    /// would lapse anyway. A lease whose holder is connected to a live node is that node's to take
    /// back, not to expire.
    var nodeTTLMs: Int64 { max(leaseTTLMs, 2 * tickMs + 500) }
    /// How long past its deadline a lease waits for the sweep (half a tick): its own node, if only late, takes
    /// it back first.
    var sweepMarginMs: Int64 { tickMs / 2 }
}
