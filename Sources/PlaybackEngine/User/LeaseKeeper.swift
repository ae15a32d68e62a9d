/// Keeps one user's lease in the storage on this node's behalf: takes it when its holder connects
/// here, renews it while the holder stays, starts the grace period when the holder is lost, and
/// tells when it has lapsed. It knows the storage and the lease's clock, nothing of the engine;
/// what a lapse does to the playback (`expire`) is `UserPlayback`'s. It belongs to the user's
/// `UserPlayback` and runs on its event loop.
final class LeaseKeeper<Storage: PlaybackStorage> {
    private let user: String
    private let storage: Storage
    private let timing: LeaseTiming
    /// The lease this node last renewed for a local holder, and when (server ms).
    private var renewed: Renewal?

    private struct Renewal {
        var lock: String
        var at: Int64
    }

    init(user: String, storage: Storage, timing: LeaseTiming) {
        self.user = user
        self.storage = storage
        self.timing = timing
    }

    /// The holder named by `playback` connected to this node (back within the grace period, or
    /// moved nodes): the lease is this node's to keep from now on. A compare-and-set: refused (false)
    /// when the lease moved on meanwhile.
    @discardableResult
    nonisolated(nonsending) func take(for playback: Playback, now: Int64) async throws -> Bool {
        try await storage.takeLease(
            user: user, holder: LeaseHolder.value(of: playback), epoch: playback.epoch, ttlMs: timing.leaseTTLMs, seen: now)
    }

    /// The holder was lost at `lostAt` without releasing: the lease lives on for the grace period
    /// unless it comes back, and an expiry freezes the position where it was at `lostAt`.
    nonisolated(nonsending) func startGrace(for playback: Playback, lostAt: Int64) async throws {
        _ = try await storage.renewLease(
            user: user, holder: LeaseHolder.value(of: playback), epoch: playback.epoch, ttlMs: timing.graceMs, seen: lostAt)
    }

    /// Whether the lease of `playback`'s holder lapsed, and if so, when the holder was lost: when
    /// it was last known connected, else a TTL before now (its lock lapsed by now, and lived that
    /// long after its last renewal).
    nonisolated(nonsending) func lapse(of playback: Playback, now: Int64) async throws -> Int64? {
        guard case .lapsed(let seen) = try await storage.leaseLapse(user: user, epoch: playback.epoch) else { return nil }
        return seen ?? now - timing.leaseTTLMs
    }

    /// After a sweep of this user: its deadline follows the lease, or goes.
    nonisolated(nonsending) func settleDeadline() async throws {
        try await storage.settleLeaseDeadline(user: user)
    }

    /// Renews the lease of `playback`'s holder, connected to this node, three times per TTL. A
    /// lease found gone or not ours is taken again only if the stored playback is still at its
    /// epoch (the compare-and-set of `take`).
    nonisolated(nonsending) func renew(_ playback: Playback, now: Int64) async throws {
        let lock = LeaseHolder.value(of: playback)
        guard renewed.map({ $0.lock != lock || now - $0.at >= timing.renewMs }) ?? true else { return }
        renewed = Renewal(lock: lock, at: now)
        guard try await !storage.renewLease(user: user, holder: lock, epoch: playback.epoch, ttlMs: timing.leaseTTLMs, seen: now) else {
            return
        }
        renewed = nil
        try await take(for: playback, now: now)
    }
}
