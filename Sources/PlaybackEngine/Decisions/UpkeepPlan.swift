/// The upkeep's choices for one user on this node, decided from values: what the presence refresh
/// found, which lease duties are due, and what a sweep does with a lapsed lease.
enum UpkeepPlan {
    /// After the presence refresh.
    enum Directory: Equatable {
        /// Nothing to do (the refresh was not due, or the directory agrees with who is online).
        case keep
        /// Who is online changed (a node that died leaves its devices to expire): read it again.
        case reload
        /// The storage lost the user's keys (a restart without persistence, a flush): write this
        /// node's devices again, and read (and restore) the state again.
        case register
    }

    /// `refresh`: what the refresh found (nil: not due); `cachedOnline`: who the cached directory
    /// says is online (nil: nothing cached).
    static func directory(after refresh: PresenceCheck?, cachedOnline: Set<String>?) -> Directory {
        switch refresh {
        case nil: .keep
        case .lost?: .register
        case .online(let online)?: cachedOnline.map { $0 == online } == false ? .reload : .keep
        }
    }

    /// What the lease needs from this node.
    struct LeaseDuties: Equatable {
        /// A transfer's confirmation deadline passed: check it (the node that made the transfer
        /// does at the deadline; this is in case it is gone).
        var checkConfirmation = false
        /// The holder is connected here: renew its lease. A lapsed lease elsewhere is the sweep's.
        var renew = false
    }

    static func duties(for playback: Playback, holderHere: Bool, now: Int64) -> LeaseDuties {
        LeaseDuties(
            checkConfirmation: playback.pendingTransfer.map { now >= $0.confirmBy } ?? false,
            renew: playback.activeDevice != nil && holderHere)
    }

    /// What a sweep does with the user's lease.
    enum Sweep: Equatable {
        /// Held, or nobody's: only the deadline is settled.
        case settle
        /// The holder is connected here and only missed its renewals (a starved process): take it back.
        case takeBack
        /// The holder is connected to another live node, which takes it back itself: sweep again in a tick.
        case deferToHolder
        /// The holder is gone: the lease expires, the position frozen where it was at `lostAt`.
        case expire(device: String, lostAt: Int64)
    }

    /// `lostAt`: when the holder of a lapsed lease was lost (nil: the lease is held);
    /// `holderNodeAlive`: whether another live node has the holder connected (asked only when needed).
    nonisolated(nonsending) static func sweep(
        holder: String?, lostAt: Int64?, holderHere: Bool, holderNodeAlive: () async throws -> Bool
    ) async rethrows -> Sweep {
        guard let holder, let lostAt else { return .settle }
        if holderHere { return .takeBack }
        if try await holderNodeAlive() { return .deferToHolder }
        return .expire(device: holder, lostAt: lostAt)
    }
}
