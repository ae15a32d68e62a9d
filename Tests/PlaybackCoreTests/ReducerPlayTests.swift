import PlaybackCore
import Testing

@Suite("play, pause, resume")
struct ReducerPlayTests {
    @Test func freshUserHasTheDocumentedInitialState() {
        let state = Playback.initial.playerState()
        #expect(state == PlayerState(
            epoch: 0, version: 0, activeDevice: nil, track: nil, isPlaying: false, positionMs: 0, positionAt: 0,
            volume: 100, repeat: .off, shuffle: false, context: nil, queue: []))
    }

    @Test func playSingleTrackMakesTheSenderActive() throws {
        var player = Player()
        let t = try player.run(.play(.init(trackID: "t1")), at: 1_000)
        #expect(t.changed)
        #expect(player.state.version == 1)
        #expect(player.state.epoch == 1)
        #expect(player.state.activeDevice == "phone")
        #expect(player.trackID == "t1")
        #expect(player.state.isPlaying)
        #expect(player.state.positionMs == 0 && player.state.positionAt == 1_000)
        #expect(player.state.context == nil)
        #expect(t.lease == LeaseChange(epoch: 1, revoked: nil, granted: "phone", reason: .takenOver))
    }

    @Test func playListMakesItTheContext() throws {
        var player = Player()
        try player.run(.play(.init(trackIDs: ["t3", "t1", "t3"])), at: 0)
        #expect(player.trackID == "t3")
        #expect(player.state.context == .list)
        #expect(player.upcomingIDs == ["t1", "t3"])
        #expect(player.state.upcoming.allSatisfy { $0.source == .context })
        #expect(Set(player.state.upcoming.map(\.entry)).count == 2)
    }

    @Test func playContextAtTrackAndPosition() throws {
        var player = Player()
        try player.run(.play(.init(trackID: "t3", context: Fixture.album, positionMs: 30_000)), at: 500)
        #expect(player.trackID == "t3")
        #expect(player.state.positionMs == 30_000)
        #expect(player.state.context == Fixture.album)
        #expect(player.upcomingIDs == ["t4", "t5"])
        #expect(player.state.position(at: 10_500) == 40_000)
    }

    @Test func playOnNamedDeviceTakesOverFromTheHolder() throws {
        var player = Player()
        try player.run(.play(.init(trackID: "t1")), at: 0)
        let t = try player.run(.play(.init(trackID: "t2", device: "laptop")), at: 1_000)
        #expect(player.state.activeDevice == "laptop")
        #expect(player.state.epoch == 2)
        #expect(t.lease == LeaseChange(epoch: 2, revoked: "phone", granted: "laptop", reason: .takenOver))
        #expect(LeaseReason.takenOver.message == "Playback paused: you started playing on another device")
    }

    @Test func playWithoutDeviceStaysOnTheActiveDevice() throws {
        var player = Player()
        try player.run(.play(.init(trackID: "t1")), at: 0, from: "laptop")
        let t = try player.run(.play(.init(trackID: "t2")), at: 1_000, from: "phone")
        #expect(player.state.activeDevice == "laptop")
        #expect(t.lease == nil)
        #expect(player.state.epoch == 1)
    }

    @Test(arguments: [
        (Command.Play(trackID: "nope"), PlaybackError.Code.trackNotFound),
        (Command.Play(trackIDs: ["t1", "nope"]), .trackNotFound),
        (Command.Play(trackIDs: []), .badRequest),
        (Command.Play(trackIDs: ["t1"], context: Fixture.album), .badRequest),
        (Command.Play(context: PlaybackContext(kind: "album", id: "zz")), .trackNotFound),
        (Command.Play(trackID: "t9", context: Fixture.album), .trackNotFound),
        (Command.Play(trackID: "tR"), .unavailableInRegion),
        (Command.Play(trackID: "t1", positionMs: 200_000), .badRequest),
        (Command.Play(trackID: "t1", device: "speaker"), .deviceOffline),
        (Command.Play(trackID: "t1", device: "toaster"), .deviceNotFound),
        (Command.Play(), .badRequest),
    ])
    func playRejects(args: Command.Play, code: PlaybackError.Code) {
        var player = Player()
        #expect(player.reject(.command(.play(args)), at: 0)?.code == code)
        #expect(player.state == .initial)
    }

    @Test func playFromRESTNeedsAnActiveDevice() {
        var player = Player()
        #expect(player.reject(.command(.play(.init(trackID: "t1"))), at: 0, from: nil)?.code == .noActiveDevice)
    }

    @Test func contextSkipsTracksNotLicensedInTheCountry() throws {
        var player = Player()
        try player.run(.play(.init(context: Fixture.restrictedAlbum)), at: 0)
        #expect(player.trackID == "t1")
        #expect(player.upcomingIDs == ["t2"])
    }

    @Test func pauseFreezesAndResumeContinuesFromPositionAt() throws {
        var player = Player()
        try player.run(.play(.init(trackID: "t1")), at: 10_000)
        try player.run(.pause, at: 15_000)
        #expect(!player.state.isPlaying)
        #expect(player.state.positionMs == 5_000 && player.state.positionAt == 15_000)
        #expect(player.state.position(at: 99_000) == 5_000)
        try player.run(.resume, at: 20_000)
        #expect(player.state.isPlaying)
        #expect(player.state.positionMs == 5_000 && player.state.positionAt == 20_000)
        #expect(player.state.position(at: 21_000) == 6_000)
        #expect(player.state.version == 3)
    }

    @Test func pauseWhilePausedChangesNothing() throws {
        var player = Player()
        try player.run(.play(.init(trackID: "t1")), at: 0)
        try player.run(.pause, at: 1_000)
        let t = try player.run(.pause, at: 2_000)
        #expect(!t.changed)
        #expect(player.state.version == 2)
    }

    @Test func resumeWithNothingLoadedIsBadRequest() {
        var player = Player()
        #expect(player.reject(.command(.resume), at: 0)?.code == .badRequest)
    }

    @Test func playWithoutTrackResumesAtGivenPosition() throws {
        var player = Player()
        try player.run(.play(.init(trackID: "t1")), at: 0)
        try player.run(.pause, at: 1_000)
        try player.run(.play(.init(positionMs: 50_000)), at: 2_000)
        #expect(player.state.isPlaying && player.state.positionMs == 50_000 && player.state.positionAt == 2_000)
    }

    @Test func resumeAfterLeaseEndedMakesTheSenderActive() throws {
        var player = Player()
        try player.run(.play(.init(trackID: "t1")), at: 0)
        try player.apply(.expire(device: "phone"), at: 5_000, from: nil)
        let t = try player.run(.resume, at: 6_000, from: "laptop")
        #expect(player.state.activeDevice == "laptop")
        #expect(t.lease?.granted == "laptop")
        #expect(player.state.positionMs == 5_000)
    }

    @Test func positionNeverLeavesTheTrack() throws {
        var player = Player()
        try player.run(.play(.init(trackID: "t9")), at: 0)
        #expect(player.state.position(at: 1_000_000) == 10_000)
        #expect(player.state.position(at: -5) == 0)
    }

    @Test func ifVersionMismatchIsAConflictCarryingTheCurrentVersion() throws {
        var player = Player()
        try player.run(.play(.init(trackID: "t1")), at: 0)
        let error = player.reject(.command(.volume(percent: 10)), at: 1, ifVersion: 0)
        #expect(error == .versionConflict(current: 1))
        #expect(error?.version == 1)
        try player.apply(.command(.volume(percent: 10)), at: 2, ifVersion: 1)
        #expect(player.state.version == 2)
    }
}
