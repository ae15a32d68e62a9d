import Synchronization

/// The users this node has devices of, each with its `UserFanout`: where the bus's frames go.
final class FanoutRegistry: Sendable {
    private let fanouts = Mutex<[String: UserFanout]>([:])

    func fanout(for user: String) -> UserFanout? { fanouts.withLock { $0[user] } }

    /// The users with a fan-out here.
    var users: [String] { fanouts.withLock { Array($0.keys) } }

    func fanoutCreating(for user: String) -> (fanout: UserFanout, created: Bool) {
        fanouts.withLock { fanouts in
            if let fanout = fanouts[user] { return (fanout, false) }
            let fanout = UserFanout()
            fanouts[user] = fanout
            return (fanout, true)
        }
    }

    /// Removes the user's fan-out if no device is on it (remembering the highest epoch and version
    /// it saw); true when removed.
    func removeIfEmpty(_ user: String, now: Int64) -> Bool {
        let removed: UserFanout? = fanouts.withLock { fanouts in
            guard let fanout = fanouts[user], fanout.isEmpty else { return nil }
            fanouts[user] = nil
            return fanout
        }
        guard let removed else { return false }
        let mark = removed.highWater
        marks.raise(user, epoch: mark.epoch, version: mark.version, at: now)
        return true
    }

    /// The highest epoch and version this node saw for users it no longer has devices of.
    let marks = HighWaterMarks()

    /// The highest epoch and version this node knows were handed out for `user`, and when it
    /// learnt them (from its fan-out, or remembered since it went).
    func highWater(of user: String, now: Int64) -> HighWaterMarks.Mark? {
        var best = marks.mark(of: user)
        if let fanout = fanout(for: user) {
            let seen = fanout.highWater
            if seen.version > 0 || seen.epoch > 0, (seen.epoch, seen.version) > (best?.epoch ?? -1, best?.version ?? -1) {
                best = HighWaterMarks.Mark(epoch: max(seen.epoch, best?.epoch ?? 0), version: max(seen.version, best?.version ?? 0), at: now)
            }
        }
        return best
    }
}

/// The highest epoch and version a node has seen per user, so that a user whose state the storage
/// lost (Redis restarted empty, with no PostgreSQL to restore from) starts again above them:
/// devices drop versions they have already seen, and the old holder must hear it lost the lease.
/// Bounded: past `capacity` users, the older half is forgotten.
final class HighWaterMarks: Sendable {
    struct Mark: Sendable, Equatable {
        var epoch: Int64
        var version: Int64
        /// When it was last raised (server ms): restores jump by the time since, like a snapshot's.
        var at: Int64
    }

    static var capacity: Int { 100_000 }
    private let marks = Mutex<[String: Mark]>([:])

    func mark(of user: String) -> Mark? { marks.withLock { $0[user] } }

    func raise(_ user: String, epoch: Int64, version: Int64, at now: Int64) {
        guard epoch > 0 || version > 0 else { return }
        marks.withLock { marks in
            let old = marks[user]
            marks[user] = Mark(epoch: max(epoch, old?.epoch ?? 0), version: max(version, old?.version ?? 0), at: now)
            guard marks.count > Self.capacity else { return }
            let cutoff = marks.values.map(\.at).sorted()[marks.count / 2]
            marks = marks.filter { $0.value.at >= cutoff }
        }
    }
}
