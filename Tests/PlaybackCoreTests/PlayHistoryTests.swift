import PlaybackCore
import Testing

/// Play history as the reducer derives it: one record per track per device, with the time
/// actually heard and why it ended.
@Suite("Play history accounting")
struct PlayHistoryTests {
    @Test func skipsTransfersAndNaturalEndsEachEndAPlay() throws {
        var player = Player()
        try player.run(.play(.init(context: Fixture.album, device: "phone")), at: 1_000)
        #expect(player.last?.finishedPlays == [])
        try player.run(.next, at: 31_000)
        #expect(player.last?.finishedPlays == [
            PlayRecord(trackID: "t1", playedAt: 1_000, endedAt: 31_000, msPlayed: 30_000, context: Fixture.album, device: "phone", reason: .skipped)
        ])
        try player.run(.transfer(device: "laptop", play: nil), at: 41_000)
        #expect(player.last?.finishedPlays.map(\.reason) == [.transferred])
        #expect(player.last?.finishedPlays.first?.msPlayed == 10_000)
        let epoch = player.state.epoch
        // Paused for 100 s: not heard.
        try player.run(.pause, at: 51_000, from: "laptop")
        try player.run(.resume, at: 151_000, from: "laptop")
        try player.apply(.trackEnded(epoch: epoch, trackID: "t2"), at: 331_000, from: "laptop")
        let finished = try #require(player.last?.finishedPlays.first)
        #expect(finished.reason == .finished && finished.device == "laptop" && finished.playedAt == 41_000)
        #expect(finished.msPlayed == 190_000, "10 s before the pause plus the remaining 180 s, capped at the track's end")
    }

    @Test func changesThatKeepTheTrackDoNotEndThePlay() throws {
        var player = Player()
        try player.run(.play(.init(trackID: "t3", device: "phone")), at: 0)
        try player.run(.volume(percent: 20), at: 5_000)
        try player.run(.seek(positionMs: 100_000), at: 10_000)
        try player.run(.volume(percent: 30), at: 15_000)
        #expect(player.state.listening?.playedMs == 15_000, "time heard, not the position reached")
        #expect(player.last?.finishedPlays == [])
    }

    @Test func anExpiredLeaseStopsThePlayAndNothingUnheardIsRecorded() throws {
        var player = Player()
        try player.run(.play(.init(trackID: "t4", device: "phone")), at: 0)
        try player.apply(.expire(device: "phone"), at: 20_000, from: nil)
        #expect(player.last?.finishedPlays.map(\.reason) == [.stopped])
        #expect(player.state.listening == nil)
        try player.run(.play(.init(trackID: "t5", device: "phone")), at: 30_000)
        try player.run(.play(.init(trackID: "t6", device: "phone")), at: 30_000)
        #expect(player.last?.finishedPlays == [], "a track skipped before any of it played is not history")
    }

    /// A state restored after the daemon that served it was gone (a restart): paused where it was
    /// when the daemon last recorded it, nobody holding it, and the time nobody was there neither
    /// played nor heard.
    @Test func aStateWhoseHolderWasLostResumesPausedAtTheLossAndCountsNoTimeAfterIt() throws {
        var player = Player()
        try player.run(.play(.init(context: Fixture.album, device: "phone")), at: 0)
        try player.run(.volume(percent: 40), at: 20_000)
        // Last recorded at 30 s (the snapshot at shutdown); restored ten minutes later.
        player.state = player.state.pausedAtLoss(lostAt: 30_000, now: 630_000)
        #expect(!player.state.isPlaying && player.state.activeDevice == nil)
        #expect(player.state.position(at: 630_000) == 30_000, "where it was at the loss, not 630 s on (past the track's end)")
        #expect(player.state.listening?.playedMs == 30_000)
        // Played again on the phone for 10 s, then skipped: 40 s heard, not 640.
        try player.run(.resume, at: 631_000)
        try player.run(.next, at: 641_000)
        let record = try #require(player.last?.finishedPlays.first)
        #expect(record.trackID == "t1" && record.msPlayed == 40_000, "\(record)")
    }

    @Test func aLossAfterTheTrackWouldHaveEndedPausesAtItsEnd() {
        var player = Player()
        _ = try? player.run(.play(.init(trackID: "t9", device: "phone")), at: 0)
        let paused = player.state.pausedAtLoss(lostAt: 60_000, now: 90_000)
        #expect(paused.position(at: 90_000) == 10_000 && !paused.isPlaying)
        #expect(paused.listening?.playedMs == 10_000, "heard to its end, not beyond")
        // A paused state keeps its position; only the lease goes.
        _ = try? player.run(.pause, at: 5_000)
        let idle = player.state.pausedAtLoss(lostAt: 6_000, now: 90_000)
        #expect(idle.position(at: 90_000) == 5_000 && idle.activeDevice == nil)
    }
}
