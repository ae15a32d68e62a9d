import PlaybackCore
@testable import PlaybackEngine
import Testing

/// Which snapshot wins when several daemons restore one user: `RestoreFloor.newerSnapshot`, over values.
@Suite("restore: the newest snapshot wins")
struct RestoreRuleTests {
    /// A restore at `version` of the snapshot at `source`, settling at 5 s.
    func restore(source: Int64, at version: Int64) -> Playback {
        var playback = Playback.initial
        playback.version = version
        playback.restoredFrom = .init(source: source, at: version, settlesAt: 5_000)
        return playback
    }

    func snapshot(_ version: Int64) -> Playback {
        var playback = Playback.initial
        playback.version = version
        return playback
    }

    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var stored: Playback
        var pending: Playback?
        var replaces: Bool
        var testDescription: String { name }
    }

    static let cases: [Case] = {
        let tests = RestoreRuleTests()
        var committedOn = tests.restore(source: 9, at: 2_981)
        committedOn.version = 2_982
        return [
            Case(name: "a newer snapshot from before the loss replaces an older restore",
                 stored: tests.restore(source: 9, at: 2_981), pending: tests.snapshot(13), replaces: true),
            Case(name: "the restore's own snapshot does not", stored: tests.restore(source: 13, at: 2_981), pending: tests.snapshot(13), replaces: false),
            Case(name: "an older snapshot does not", stored: tests.restore(source: 13, at: 2_981), pending: tests.snapshot(10), replaces: false),
            Case(name: "nothing queued, nothing to offer", stored: tests.restore(source: 9, at: 2_981), pending: nil, replaces: false),
            Case(name: "a command committed on top: the restore stays", stored: committedOn, pending: tests.snapshot(13), replaces: false),
            Case(name: "a state that was never restored stays", stored: tests.snapshot(20), pending: tests.snapshot(13), replaces: false),
            // This node queued its own (replaced) restore of snapshot 10: it counts as 10, not as its raised version.
            Case(name: "a queued restore counts with its source (older)",
                 stored: tests.restore(source: 13, at: 2_983), pending: tests.restore(source: 10, at: 2_982), replaces: false),
            Case(name: "a queued restore counts with its source (newer)",
                 stored: tests.restore(source: 9, at: 2_983), pending: tests.restore(source: 10, at: 2_982), replaces: true),
            Case(name: "a commit on top of an earlier restore is on the raised line: not comparable",
                 stored: tests.restore(source: 9, at: 2_981), pending: tests.snapshot(3_500), replaces: false),
        ]
    }()

    @Test(arguments: cases)
    func theNewestSnapshotAnyNodeHoldsWins(_ test: Case) {
        let newer = RestoreFloor.newerSnapshot(than: test.stored, pending: test.pending)
        #expect((newer != nil) == test.replaces)
    }
}
