@testable import PlaybackEngine
import Testing

/// How a command that lost the race to commit tries again (`ContentionBackoff`), over values.
@Suite("contention backoff")
struct ContentionBackoffTests {
    @Test(arguments: [(0, 0.9), (1, 0.9), (2, 0.9)])
    func theFirstRoundsGoAtOnce(round: Int, random: Double) {
        #expect(ContentionBackoff.pause(beforeRound: round, random: random) == 0)
    }

    @Test func laterRoundsPauseWithFullJitterUnderAGrowingCeiling() {
        let first = ContentionBackoff.immediateRounds
        #expect(ContentionBackoff.pause(beforeRound: first, random: 0) == 0, "full jitter: as low as nothing")
        var ceiling: Int64 = 0
        for round in first..<ContentionBackoff.maxRounds {
            let top = ContentionBackoff.pause(beforeRound: round, random: 1) ?? -1
            #expect(top >= ceiling && top <= ContentionBackoff.capMs, "round \(round): \(top)")
            #expect(ContentionBackoff.pause(beforeRound: round, random: 0.5) == (top + 1) / 2 || ContentionBackoff.pause(beforeRound: round, random: 0.5) == top / 2)
            ceiling = top
        }
        #expect(ceiling == ContentionBackoff.capMs, "the ceiling reaches the cap")
    }

    @Test func aCommandIsGivenUpOnlyAfterSecondsOfLostRounds() {
        #expect(ContentionBackoff.pause(beforeRound: ContentionBackoff.maxRounds, random: 0.5) == nil)
        let worst = (0..<ContentionBackoff.maxRounds).reduce(Int64(0)) { $0 + (ContentionBackoff.pause(beforeRound: $1, random: 1) ?? 0) }
        #expect(worst >= 2_000 && worst <= 6_000, "at most \(worst) ms of pauses before giving up")
    }
}
