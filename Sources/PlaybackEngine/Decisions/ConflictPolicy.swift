import PlaybackCore

/// What a command does when the storage did not take it, decided from values.
///
/// - Another node committed first (a conflict carrying the state): again on that state, at once
///   for the first rounds, then asking for the user's turn (`CommandCall.Turn`), so that the
///   nodes racing on one user take turns instead of losing rounds to each other; a command holding
///   the turn retries at once.
/// - The stored state went back below what this node saw (a failover lost writes), is restored and
///   still settling, or is gone: read (and restore) it again, then again.
/// - Another command has the turn: wait for its commit to come on the bus, at most a little (never
///   past the turn's end), then again.
/// - Given up only after `ContentionBackoff.maxRounds` lost rounds or `giveUpAfterMs` of trying:
///   an unconditional command is not refused for contention alone; `if_version` is how a command
///   is refused for a newer state.
enum ConflictPolicy {
    /// Lost rounds after which a command asks for the user's turn.
    static let turnAfterRounds = 3
    /// How long a turn lasts if its command never comes back (its node died).
    static let turnTTLMs: Int64 = 300
    /// The longest wait for a turn another command has, when its commit does not come on the bus
    /// first (it changed nothing, or its node died): then the command looks again.
    static let turnPollMs: Int64 = 10
    /// How long a command keeps trying, in all.
    static let giveUpAfterMs: Int64 = 10_000

    enum Step: Equatable {
        /// Again on the state the reply carried, after `afterMs`.
        case retry(on: Playback, afterMs: Int64)
        /// Read the state again (restoring it when it went back or is gone), then again.
        case reload
        /// Another command has the turn: again after `ms`.
        case wait(ms: Int64)
        /// Refused for contention, with a hint of when to try again.
        case giveUp(retryAfterMs: Int64)
    }

    /// Where a command stands in its rounds.
    struct Rounds: Equatable {
        /// Rounds lost to a conflict so far.
        var lost = 0
        /// When its first try was (server ms).
        var startedAt: Int64
        /// The command's token once it asked for the user's turn (the same in every later round).
        var turnToken: String?

        /// Whether the next try asks for the user's turn.
        var asksForTurn: Bool { lost >= ConflictPolicy.turnAfterRounds }
    }

    /// After a conflict reply carrying `current` (nil: the storage has no state), given the newest
    /// epoch and version this node saw of the user (`seen`), the rounds so far (this one not yet
    /// counted), and a uniform `random` in [0, 1].
    static func afterConflict(
        _ current: Playback?, seen: (epoch: Int64, version: Int64), rounds: Rounds, now: Int64, random: Double
    ) -> Step {
        let lost = rounds.lost + 1
        if lost >= ContentionBackoff.maxRounds || now - rounds.startedAt >= giveUpAfterMs { return .giveUp(retryAfterMs: ContentionBackoff.capMs) }
        guard let current else { return .reload }
        if RestoreFloor.wentBack(current, seen: seen) || current.settling(at: now) > 0 { return .reload }
        // At once for the first rounds; then with the turn asked for, and again at once on the state
        // found when it was taken (nobody else commits while it is held). A command that loses even
        // with the turn (it lapsed under a slow node) backs off.
        guard lost > turnAfterRounds + 1 else { return .retry(on: current, afterMs: 0) }
        return .retry(on: current, afterMs: ContentionBackoff.pause(beforeRound: lost - 2, random: random) ?? 0)
    }

    /// Another command has the user's turn for at most `heldMs`.
    static func afterTurnHeld(forMs heldMs: Int64, rounds: Rounds, now: Int64, random: Double) -> Step {
        if now - rounds.startedAt >= giveUpAfterMs { return .giveUp(retryAfterMs: max(1, heldMs)) }
        let pause = 1 + Int64((Double(turnPollMs - 1) * min(max(random, 0), 1)).rounded())
        return .wait(ms: min(max(1, heldMs), pause))
    }
}
