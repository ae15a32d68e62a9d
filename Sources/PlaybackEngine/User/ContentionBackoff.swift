/// How a command that lost the race to commit (another node committed first) tries again: at once
/// for the first rounds (the conflict reply carries the state, so a retry needs no read), then
/// after a pause with full jitter that grows with each lost round, so that nodes that keep
/// colliding on one user spread out instead of losing in lockstep. An unconditional command is
/// refused for contention alone only after `maxRounds` (seconds of trying); `if_version` stays the
/// way to be refused for a newer state.
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
