import Synchronization

/// Keeps one user's lease in the storage on this node's behalf: takes it when its holder connects
/// here, renews it while the holder stays, starts the grace period when the holder is lost, and
/// tells when it has lapsed. It knows the storage and the lease's clock, nothing of the engine;
/// what a lapse does to the playback (`expire`) is `UserPlayback`'s.
final class LeaseKeeper<Storage: PlaybackStorage>: Sendable {
    private let user: String
    private let storage: Storage
    private let timing: LeaseTiming
    /// The lease this node last renewed for a local holder, and when (server ms).
    private let renewed = Mutex<Renewal?>(nil)

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
    /// moved nodes): the lease is this node's to keep from now on.
    func take(for playback: Playback) async throws {
        try await storage.takeLease(user: user, holder: LeaseHolder.value(of: playback), ttlMs: timing.leaseTTLMs)
    }

    /// The holder was lost without releasing: the lease lives on for the grace period unless it
    /// comes back.
    func startGrace(for playback: Playback) async throws {
        _ = try await storage.renewLease(user: user, holder: LeaseHolder.value(of: playback), ttlMs: timing.graceMs)
    }

    /// Whether nobody holds the lease any more (its TTL ran out).
    func hasLapsed() async throws -> Bool {
        try await !storage.leaseExists(user: user)
    }

    /// Renews the lease of `playback`'s holder, connected to this node, three times per TTL. A
    /// lease found gone or not ours is taken again only if the state, read afresh by `current`,
    /// still names this holder.
    func renew(_ playback: Playback, now: Int64, current: () async throws -> Playback) async throws {
        let lock = LeaseHolder.value(of: playback)
        let due = renewed.withLock { renewed in
            guard renewed.map({ $0.lock != lock || now - $0.at >= timing.renewMs }) ?? true else { return false }
            renewed = Renewal(lock: lock, at: now)
            return true
        }
        guard due else { return }
        guard try await !storage.renewLease(user: user, holder: lock, ttlMs: timing.leaseTTLMs) else { return }
        renewed.withLock { $0 = nil }
        let fresh = try await current()
        if fresh.activeDevice == playback.activeDevice, LeaseHolder.value(of: fresh) == lock {
            try await storage.retakeLease(user: user, holder: lock, ttlMs: timing.leaseTTLMs)
        }
    }
}
