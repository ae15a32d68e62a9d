import PlaybackCore
import Testing

@Suite("lease: transfer, reports, release, expiry")
struct ReducerLeaseTests {
    func playing() throws -> Player {
        var player = Player()
        try player.run(.play(.init(trackID: "t1", context: Fixture.album)), at: 10_000)
        return player
    }

    @Test func transferKeepsTheExactExtrapolatedPosition() throws {
        var player = try playing()
        let t = try player.run(.transfer(device: "laptop", play: nil), at: 72_345)
        #expect(player.state.activeDevice == "laptop")
        #expect(player.state.positionMs == 62_345 && player.state.positionAt == 72_345)
        #expect(player.state.isPlaying && player.trackID == "t1")
        #expect(player.state.epoch == 2 && player.state.version == 2)
        #expect(t.lease == LeaseChange(epoch: 2, revoked: "phone", granted: "laptop", reason: .transferred))
    }

    @Test func transferWhilePausedStaysPausedAtThePausedPosition() throws {
        var player = try playing()
        try player.run(.pause, at: 20_000)
        try player.run(.transfer(device: "laptop", play: nil), at: 90_000)
        #expect(!player.state.isPlaying && player.state.positionMs == 10_000)
        #expect(player.state.activeDevice == "laptop")
    }

    @Test func transferWithPlayStartsOrStops() throws {
        var player = try playing()
        try player.run(.pause, at: 20_000)
        try player.run(.transfer(device: "laptop", play: true), at: 30_000)
        #expect(player.state.isPlaying && player.state.positionMs == 10_000 && player.state.positionAt == 30_000)
        try player.run(.transfer(device: "phone", play: false), at: 31_000)
        #expect(!player.state.isPlaying && player.state.positionMs == 11_000)
    }

    @Test func transferToTheHolderChangesNothing() throws {
        var player = try playing()
        let t = try player.run(.transfer(device: "phone", play: nil), at: 20_000)
        #expect(!t.changed && t.lease == nil && player.state.epoch == 1)
    }

    @Test func transferWithNothingLoadedJustMovesTheLease() throws {
        var player = Player()
        let t = try player.run(.transfer(device: "laptop", play: true), at: 0)
        #expect(player.state.activeDevice == "laptop" && !player.state.isPlaying && player.state.current == nil)
        #expect(t.lease == LeaseChange(epoch: 1, revoked: nil, granted: "laptop", reason: .transferred))
    }

    @Test(arguments: [("speaker", PlaybackError.Code.deviceOffline), ("toaster", .deviceNotFound)])
    func transferNeedsAKnownOnlineDevice(device: String, code: PlaybackError.Code) throws {
        var player = try playing()
        #expect(player.reject(.command(.transfer(device: device, play: nil)), at: 0)?.code == code)
    }

    @Test func smallReportDriftCreatesNoVersion() throws {
        var player = try playing()
        let t = try player.apply(.report(epoch: 1, positionMs: 10_900, isPlaying: true, trackID: "t1"), at: 20_000)
        #expect(!t.changed && player.state.version == 1)
    }

    @Test func reportFarOffOrChangingIsPlayingCreatesAVersion() throws {
        var player = try playing()
        try player.apply(.report(epoch: 1, positionMs: 25_000, isPlaying: true, trackID: "t1"), at: 20_000)
        #expect(player.state.version == 2 && player.state.positionMs == 25_000 && player.state.positionAt == 20_000)
        try player.apply(.report(epoch: 1, positionMs: 26_000, isPlaying: false, trackID: "t1"), at: 21_000)
        #expect(player.state.version == 3 && !player.state.isPlaying)
    }

    @Test func staleReportChangesNothing() throws {
        var player = try playing()
        try player.run(.transfer(device: "laptop", play: nil), at: 11_000)
        let error = player.reject(.report(epoch: 1, positionMs: 0, isPlaying: false, trackID: "t1"), at: 12_000, from: "phone")
        #expect(error == .staleEpoch(current: 2))
        #expect(error?.epoch == 2)
    }

    @Test(arguments: [
        (Int64(2), "phone"),  // a future epoch
        (Int64(1), "laptop"),  // the right epoch from a non-holder
        (Int64(0), "phone"),  // an old epoch
    ])
    func reportsNeedTheCurrentEpochFromTheHolder(epoch: Int64, sender: String) throws {
        var player = try playing()
        #expect(player.reject(.report(epoch: epoch, positionMs: 0, isPlaying: true, trackID: "t1"), at: 0, from: sender)?.code == .staleEpoch)
        #expect(player.reject(.trackEnded(epoch: epoch, trackID: "t1"), at: 0, from: sender)?.code == .staleEpoch)
    }

    @Test func reportNamingAnotherTrackIsBadRequest() throws {
        var player = try playing()
        #expect(player.reject(.report(epoch: 1, positionMs: 0, isPlaying: true, trackID: "t2"), at: 0)?.code == .badRequest)
    }

    @Test func reportPositionIsClampedIntoTheTrack() throws {
        var player = try playing()
        try player.apply(.report(epoch: 1, positionMs: 900_000, isPlaying: false, trackID: "t1"), at: 20_000)
        #expect(player.state.positionMs == 200_000)
    }

    @Test func releaseByTheHolderPausesAtTheExtrapolatedPosition() throws {
        var player = try playing()
        let t = try player.apply(.release, at: 15_000)
        #expect(player.state.activeDevice == nil && !player.state.isPlaying)
        #expect(player.state.positionMs == 5_000 && player.state.epoch == 2)
        #expect(t.lease == LeaseChange(epoch: 2, revoked: "phone", granted: nil, reason: .released))
    }

    @Test func releaseByANonHolderIsStaleEpoch() throws {
        var player = try playing()
        #expect(player.reject(.release, at: 0, from: "laptop")?.code == .staleEpoch)
    }

    @Test func expiryEndsOnlyTheHoldersLease() throws {
        var player = try playing()
        #expect(try !player.apply(.expire(device: "laptop"), at: 20_000, from: nil).changed)
        let t = try player.apply(.expire(device: "phone"), at: 20_000, from: nil)
        #expect(t.lease?.reason == .expired && player.state.activeDevice == nil && player.state.positionMs == 10_000)
        #expect(player.state.epoch == 2)
    }

    @Test func expiryFreezesThePositionAtTheMomentOfLoss() throws {
        var player = try playing()
        // Lost at 11,500 (1.5 s of play after 10,000), expired after a 10 s grace.
        let t = try player.apply(.expire(device: "phone", lostAt: 11_500), at: 21_500, from: nil)
        #expect(t.lease?.reason == .expired && !player.state.isPlaying)
        #expect(player.state.positionMs == 1_500 && player.state.positionAt == 21_500, "\(player.state.positionMs)")
        // A loss recorded before the last change counts from that change.
        var other = try playing()
        _ = try other.apply(.command(.seek(positionMs: 60_000)), at: 15_000, from: "phone")
        _ = try other.apply(.expire(device: "phone", lostAt: 12_000), at: 25_000, from: nil)
        #expect(other.state.positionMs == 60_000)
    }

    @Test func causeOpsNameTheInput() {
        #expect(Input.command(.seek(positionMs: 1)).causeOp == "seek")
        #expect(Input.command(.queueAdd(trackID: "t1", at: .end)).causeOp == "queue_add")
        #expect(Input.report(epoch: 1, positionMs: 0, isPlaying: true, trackID: "t").causeOp == "report")
        #expect(Input.trackEnded(epoch: 1, trackID: "t").causeOp == "track_ended")
        #expect(Input.release.causeOp == "released")
        #expect(Input.expire(device: "d").causeOp == "expired")
    }
}
