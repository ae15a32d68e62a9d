import Foundation
import PlaybackCore
import Testing

/// The hand-written `Playback` writer against Foundation's decoder.
@Suite("PlaybackJSON")
struct PlaybackJSONTests {
    func roundTrips(_ playback: Playback) throws -> Bool {
        try JSONDecoder().decode(Playback.self, from: Data(PlaybackJSON.encode(playback))) == playback
    }

    @Test(arguments: 0..<10)
    func everyStateOfARandomSessionReadsBackEqual(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed &+ 77)
        var state = Playback.initial
        var now: Int64 = 1_000
        #expect(try roundTrips(state))
        for _ in 0..<200 {
            now += Int64(rng.next() % 30_000)
            let input = ReducerPropertyTests.randomInput(&rng, state: state)
            let sender = ReducerPropertyTests.senders[Int(rng.next() % UInt64(ReducerPropertyTests.senders.count))]
            if let next = try? Fixture.reducer.apply(input, to: state, environment: Fixture.env(now, from: sender, seed: rng.next()), ifVersion: nil) {
                state = next.playback
            }
            #expect(try roundTrips(state), "version \(state.version)")
        }
    }

    @Test func stringsWithQuotesControlCharactersAndAnyUnicodeSurvive() throws {
        var playback = Playback.initial
        let track = Track(id: "t\"1\\", title: "line\nbreak\ttab \u{1} \u{1f} é 😀 \u{2028}", artist: "\"quoted\"", durationMs: 1)
        playback.current = .init(entry: "e\u{0}", source: .queue, track: track)
        playback.activeDevice = "d\\1"
        playback.positionAt = .min
        playback.nextEntry = .max
        playback.context = .list
        playback.contextTracks = ["e\"": track]
        playback.contextOrder = ["e\""]
        playback.playOrder = ["e\""]
        playback.userQueue = [QueueEntry(entry: "q", source: .queue, track: track)]
        playback.restoredFrom = .init(source: -1, at: .max, settlesAt: 12)
        #expect(try roundTrips(playback))
        #expect(try JSONSerialization.jsonObject(with: Data(PlaybackJSON.encode(playback))) is [String: Any])
    }

    @Test func aRestoreMarkTellsWhetherANewerSnapshotMayReplaceIt() {
        var restored = Playback.initial
        restored.version = 2_041
        restored.restoredFrom = .init(source: 40, at: 2_041)
        #expect(restored.isRestore(olderThan: 41), "a newer snapshot may replace it")
        #expect(!restored.isRestore(olderThan: 40), "the same snapshot may not")
        #expect(!restored.isRestore(olderThan: 39), "nor an older one")
        restored.version = 2_042
        #expect(!restored.isRestore(olderThan: 41), "a command committed on top of it: it stays")
        #expect(!Playback.initial.isRestore(olderThan: 41), "a playback that was never restored stays")
    }

    @Test func aRestoreSettlesAtItsTimeOrWhenSomethingCommitsOnTop() {
        var restored = Playback.initial
        restored.version = 2_041
        restored.restoredFrom = .init(source: 40, at: 2_041, settlesAt: 5_000)
        #expect(restored.settling(at: 4_000) == 1_000)
        #expect(restored.settling(at: 5_000) == 0)
        restored.version = 2_042
        #expect(restored.settling(at: 4_000) == 0, "replaced or committed on: settled")
        #expect(Playback.initial.settling(at: 4_000) == 0)
    }
}
