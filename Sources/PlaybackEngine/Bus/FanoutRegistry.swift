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

    /// Removes the user's fan-out if no device is on it; true when removed.
    func removeIfEmpty(_ user: String) -> Bool {
        fanouts.withLock { fanouts in
            guard let fanout = fanouts[user], fanout.isEmpty else { return false }
            fanouts[user] = nil
            return true
        }
    }
}
