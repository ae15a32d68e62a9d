/// The pauses of a command that keeps losing the race to commit even with the user's turn (its
/// turn lapsed under a slow node; `ConflictPolicy` decides when they apply): full jitter under a
/// ceiling that grows with each lost round, so that nodes that keep colliding on one user spread
/// out instead of losing in lockstep. A command is refused for contention alone only after
/// `maxRounds` (or `ConflictPolicy.giveUpAfterMs`).
struct ContentionBackoff {
    /// Rounds tried at once, the first try included.
    static let immediateRounds = 3
    /// Rounds in all.
    static let maxRounds = 24
    static let baseMs: Int64 = 5
    static let capMs: Int64 = 250

    /// The pause (ms) before round `round` (0 is the first try), given a uniform `random` in
    /// [0, 1]; nil when the command is to be given up.
    static func pause(beforeRound round: Int, random: Double) -> Int64? {
        guard round < maxRounds else { return nil }
        guard round >= immediateRounds else { return 0 }
        let ceiling = min(capMs, baseMs << min(round - immediateRounds + 1, 16))
        return Int64((Double(ceiling) * min(max(random, 0), 1)).rounded())
    }
}
