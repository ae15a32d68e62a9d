import PlaybackCore
import Testing

@Suite("seek, next, previous, repeat, shuffle, track end")
struct ReducerNavigationTests {
    /// Album a1 (t1…t5) playing from t1 on the phone at time 0.
    func albumPlayer(at track: String = "t1") throws -> Player {
        var player = Player()
        try player.run(.play(.init(trackID: track, context: Fixture.album)), at: 0)
        return player
    }

    @Test func seekSetsPositionAndClampsBelowZero() throws {
        var player = try albumPlayer()
        try player.run(.seek(positionMs: 60_000), at: 1_000)
        #expect(player.state.positionMs == 60_000 && player.state.positionAt == 1_000)
        try player.run(.seek(positionMs: -500), at: 2_000)
        #expect(player.state.positionMs == 0)
    }

    @Test func seekAtOrPastTheEndActsAsNext() throws {
        var player = try albumPlayer()
        try player.run(.seek(positionMs: 200_000), at: 1_000)
        #expect(player.trackID == "t2" && player.state.positionMs == 0)
        try player.run(.seek(positionMs: 9_999_999), at: 2_000)
        #expect(player.trackID == "t3")
    }

    @Test func seekPastTheEndWithRepeatTrackStillMovesOn() throws {
        var player = try albumPlayer()
        try player.run(.setRepeat(.track), at: 0)
        try player.run(.seek(positionMs: 250_000), at: 1_000)
        #expect(player.trackID == "t2")
    }

    @Test func seekWhilePausedToTheSamePositionChangesNothing() throws {
        var player = try albumPlayer()
        try player.run(.pause, at: 4_000)
        #expect(try !player.run(.seek(positionMs: 4_000), at: 9_000).changed)
    }

    @Test func nextAndPreviousKeepIsPlaying() throws {
        var player = try albumPlayer()
        try player.run(.pause, at: 1_000)
        try player.run(.next, at: 2_000)
        #expect(player.trackID == "t2" && !player.state.isPlaying && player.state.positionMs == 0)
        try player.run(.previous, at: 3_000)
        #expect(player.trackID == "t1" && !player.state.isPlaying)
    }

    @Test func previousRestartsWhenMoreThanThreeSecondsIn() throws {
        var player = try albumPlayer(at: "t2")
        try player.run(.previous, at: 3_001)
        #expect(player.trackID == "t2")
        #expect(player.state.positionMs == 0 && player.state.positionAt == 3_001)
    }

    @Test func previousWithinThreeSecondsGoesBackOrRestartsAtTheStart() throws {
        var player = try albumPlayer(at: "t2")
        try player.run(.previous, at: 3_000)
        #expect(player.trackID == "t1")
        try player.run(.previous, at: 4_000)
        #expect(player.trackID == "t1" && player.state.positionMs == 0 && player.state.positionAt == 4_000)
    }

    @Test func previousFromAQueuedTrackReturnsToTheLastContextTrack() throws {
        var player = try albumPlayer(at: "t2")
        try player.run(.queueAdd(trackID: "t8", at: .end), at: 0)
        try player.run(.next, at: 1_000)
        #expect(player.trackID == "t8" && player.state.current?.source == .queue)
        try player.run(.previous, at: 2_000)
        #expect(player.trackID == "t2")
        #expect(player.upcomingIDs == ["t3", "t4", "t5"])
    }

    @Test func trackEndAdvancesThroughTheContext() throws {
        var player = try albumPlayer()
        try player.apply(.trackEnded(epoch: 1, trackID: "t1"), at: 200_000)
        #expect(player.trackID == "t2" && player.state.isPlaying && player.state.positionAt == 200_000)
        #expect(player.last?.queueChanged == true)
        #expect(player.state.playerState(includeQueue: true).queue?.map(\.track.id) == ["t3", "t4", "t5"])
    }

    @Test func trackEndWithNothingNextStopsAtTheStartOfTheLastTrack() throws {
        var player = try albumPlayer(at: "t5")
        try player.apply(.trackEnded(epoch: 1, trackID: "t5"), at: 200_000)
        #expect(player.trackID == "t5")
        #expect(!player.state.isPlaying && player.state.positionMs == 0)
        #expect(player.state.activeDevice == "phone")
    }

    @Test func trackEndOfASingleTrackWithAnEmptyQueueStops() throws {
        var player = Player()
        try player.run(.play(.init(trackID: "t9")), at: 0)
        try player.apply(.trackEnded(epoch: 1, trackID: "t9"), at: 10_000)
        #expect(player.trackID == "t9" && !player.state.isPlaying && player.state.positionMs == 0)
        #expect(player.state.upcoming.isEmpty)
    }

    @Test func repeatTrackReplaysAtTheNaturalEndOnly() throws {
        var player = try albumPlayer()
        try player.run(.setRepeat(.track), at: 0)
        try player.apply(.trackEnded(epoch: 1, trackID: "t1"), at: 200_000)
        #expect(player.trackID == "t1" && player.state.positionMs == 0 && player.state.positionAt == 200_000)
        #expect(player.state.isPlaying)
        try player.run(.next, at: 201_000)
        #expect(player.trackID == "t2")
    }

    @Test func repeatContextWrapsToTheStart() throws {
        var player = try albumPlayer(at: "t5")
        try player.run(.setRepeat(.context), at: 0)
        try player.apply(.trackEnded(epoch: 1, trackID: "t5"), at: 200_000)
        #expect(player.trackID == "t1" && player.state.isPlaying)
        #expect(player.upcomingIDs == ["t2", "t3", "t4", "t5"])
    }

    @Test func repeatContextWithoutContextActsAsOff() throws {
        var player = Player()
        try player.run(.play(.init(trackID: "t9")), at: 0)
        try player.run(.setRepeat(.context), at: 0)
        try player.apply(.trackEnded(epoch: 1, trackID: "t9"), at: 10_000)
        #expect(!player.state.isPlaying && player.trackID == "t9")
    }

    @Test func userQueuedEntriesPlayBeforeTheContext() throws {
        var player = try albumPlayer()
        try player.run(.queueAdd(trackID: "t8", at: .end), at: 0)
        try player.apply(.trackEnded(epoch: 1, trackID: "t1"), at: 200_000)
        #expect(player.trackID == "t8" && player.state.current?.source == .queue)
        try player.apply(.trackEnded(epoch: 1, trackID: "t8"), at: 400_000)
        #expect(player.trackID == "t2")
    }

    @Test func trackEndForATrackNoLongerCurrentIsIgnored() throws {
        var player = try albumPlayer()
        try player.run(.next, at: 1_000)
        let t = try player.apply(.trackEnded(epoch: 1, trackID: "t1"), at: 200_000)
        #expect(!t.changed && player.trackID == "t2")
    }

    @Test func shuffleReordersTheRestAndUnshuffleRestoresTheOriginalOrder() throws {
        var player = try albumPlayer(at: "t2")
        try player.run(.queueAdd(trackID: "t9", at: .end), at: 0)
        try player.run(.setShuffle(true), at: 1_000)
        #expect(player.trackID == "t2")
        let shuffled = player.upcomingIDs
        #expect(shuffled.first == "t9")
        #expect(Set(shuffled.dropFirst()) == ["t1", "t3", "t4", "t5"])
        #expect(Array(shuffled.dropFirst()) != ["t1", "t3", "t4", "t5"], "seed 7 gives a real reordering")
        try player.run(.setShuffle(false), at: 2_000)
        #expect(player.upcomingIDs == ["t9", "t3", "t4", "t5"])
    }

    @Test func unshuffleAfterAQueuedTrackRestoresOrderAfterTheLastContextTrack() throws {
        var player = try albumPlayer(at: "t3")
        try player.run(.setShuffle(true), at: 0)
        try player.run(.queueAdd(trackID: "t9", at: .next), at: 0)
        try player.run(.next, at: 1_000)
        #expect(player.trackID == "t9")
        try player.run(.setShuffle(false), at: 2_000)
        #expect(player.upcomingIDs == ["t4", "t5"])
    }

    @Test func shuffleIsAFunctionOfTheSeed() throws {
        var a = try albumPlayer()
        var b = try albumPlayer()
        try a.run(.setShuffle(true), at: 0)
        try b.run(.setShuffle(true), at: 0)
        #expect(a.upcomingIDs == b.upcomingIDs)
    }

    @Test func playingAContextWhileShuffledStartsWithTheChosenTrack() throws {
        var player = Player()
        try player.run(.setShuffle(true), at: 0)
        try player.run(.play(.init(trackID: "t4", context: Fixture.album)), at: 0)
        #expect(player.trackID == "t4")
        #expect(Set(player.upcomingIDs) == ["t1", "t2", "t3", "t5"])
    }

    @Test(arguments: [-1, 101, 1_000])
    func volumeOutsideTheRangeIsRejected(percent: Int) {
        var player = Player()
        #expect(player.reject(.command(.volume(percent: percent)), at: 0)?.code == .badRequest)
    }

    @Test func volumeToTheSameValueChangesNothing() throws {
        var player = Player()
        try player.run(.volume(percent: 40), at: 0)
        #expect(player.state.volume == 40 && player.state.version == 1)
        #expect(try !player.run(.volume(percent: 40), at: 1).changed)
        #expect(try player.run(.volume(percent: 0), at: 2).changed)
    }

    @Test func nextWithNothingLoadedIsBadRequest() {
        var player = Player()
        #expect(player.reject(.command(.next), at: 0)?.code == .badRequest)
        #expect(player.reject(.command(.previous), at: 0)?.code == .badRequest)
        #expect(player.reject(.command(.seek(positionMs: 0)), at: 0)?.code == .badRequest)
    }
}
