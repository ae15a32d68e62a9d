import PlaybackCore

/// What a restore puts back, decided from values: the newest of what PostgreSQL (or a snapshot
/// still queued here) had and what the storage still holds, raised above everything this node saw
/// handed out, and settling for a while so that a node holding a newer snapshot may replace it.
enum RestoreFloor {
    enum Choice: Equatable {
        /// Store `playback`; `announce`: tell the user's devices (nothing to tell of an empty new user).
        case put(Playback, announce: Bool)
        /// PostgreSQL cannot say and this node served the user: starting them empty would lose
        /// their queue and track for good, so their changes wait (`unavailable`, a retry hint).
        case wait(PlaybackError)
    }

    /// - Parameters:
    ///   - found: what the durability layer found (`Durability.restore`).
    ///   - stale: what the storage still holds, when it went back in time (nil: it holds nothing).
    ///   - mark: the newest epoch and version this node saw of the user, and when.
    ///   - settleMs: how long the restore waits for a newer snapshot from another node.
    static func choose(
        _ found: Durability.Restored, stale: Playback?, mark: HighWaterMarks.Mark?, now: Int64, settleMs: Int64
    ) -> Choice {
        var found = found
        let staleSource = stale.map { stale -> Playback in
            var source = stale
            source.restoredFrom = .init(source: stale.version, at: stale.version)
            return source
        }
        if case .unreachable(let empty) = found {
            if let staleSource {
                // What the storage still holds beats an empty playback.
                found = .unknown(staleSource)
            } else if mark != nil {
                return .wait(PlaybackError(.unavailable, "this playback is being restored and PostgreSQL is unreachable; try again", retryAfterMs: 1_000))
            } else {
                found = .unknown(empty)
            }
        }
        if let staleSource {
            switch found {
            case .fresh:
                found = .unknown(staleSource)
            case .snapshot(let playback), .unknown(let playback), .unreachable(let playback):
                if (playback.epoch, playback.version) < (staleSource.epoch, staleSource.version) { found = .unknown(staleSource) }
            }
        }
        if let mark {
            // Above everything this node saw handed out, even without PostgreSQL (invariants 1 and
            // 3): by the time since it saw it, as a snapshot of that age would be.
            var base = Playback.initial
            base.epoch = mark.epoch
            base.version = mark.version
            let floor = Durability.resume(base, takenAt: mark.at, now: now)
            switch found {
            case .fresh:
                found = .unknown(floor)
            case .snapshot(var playback), .unknown(var playback), .unreachable(var playback):
                if (playback.epoch, playback.version) < (floor.epoch, floor.version) {
                    playback.epoch = max(playback.epoch, floor.epoch)
                    playback.version = max(playback.version, floor.version)
                    found = .snapshot(playback)
                }
            }
        }
        switch found {
        case .fresh:
            // The empty state is stored, so that the next read finds it instead of coming here again.
            return .put(.initial, announce: false)
        case .snapshot(var playback), .unknown(var playback), .unreachable(var playback):
            // Which snapshot it came from (-1: none), at the version it is put back at, and until when
            // it waits for a newer one that another node may hold.
            playback.restoredFrom = .init(source: playback.restoredFrom?.source ?? -1, at: playback.version, settlesAt: now + settleMs)
            return .put(playback, announce: true)
        }
    }

    /// True when the stored playback is older than what this node saw of the user: the storage
    /// went back in time (a Redis failover that lost acknowledged writes, a restart from an old
    /// dump). Epochs and versions only ever rise in storage; the one look-alike, a read answered
    /// just before a commit whose frame arrived first, is told apart by reading again.
    static func wentBack(_ stored: Playback, seen: (epoch: Int64, version: Int64)) -> Bool {
        stored.epoch < seen.epoch || stored.version < seen.version
    }

    /// A snapshot this node holds (queued for PostgreSQL) that is newer than the one `stored` was
    /// restored from, when nothing has committed on top of that restore: the newest snapshot any
    /// node holds wins. The snapshot counts with the version of its content: its own when taken
    /// before the loss (below the restore's, which was raised above everything handed out), its
    /// source's when it is itself a restore this node queued.
    static func newerSnapshot(than stored: Playback, pending: Playback?) -> Playback? {
        guard let pending, pending.version < stored.version || pending.contentVersion != pending.version,
            stored.isRestore(olderThan: pending.contentVersion)
        else { return nil }
        return pending
    }
}
