import PlaybackCore
import Testing

/// Two-phase transfers: a target that declared `transfer_confirm` must report that it plays by
/// `confirm_by`, else playback goes back to where it came from (or pauses).
@Suite("lease: transfers that must be confirmed")
struct ReducerTransferConfirmTests {
    /// Playing on the phone since 10 s, the laptop confirms its starts.
    func playing() throws -> Player {
        var player = Player()
        player.confirming = ["laptop"]
        try player.run(.play(.init(trackID: "t1", context: Fixture.album)), at: 10_000)
        return player
    }

    @Test func aTransferToAConfirmingDeviceCarriesItsDeadline() throws {
        var player = try playing()
        let t = try player.run(.transfer(device: "laptop", play: nil), at: 20_000)
        #expect(t.lease == LeaseChange(epoch: 2, revoked: "phone", granted: "laptop", reason: .transferred, confirmBy: 23_000))
        #expect(player.state.pendingTransfer == .init(source: "phone", confirmBy: 23_000))
    }

    @Test func aPlayingReportAtTheEpochConfirms() throws {
        var player = try playing()
        try player.run(.transfer(device: "laptop", play: nil), at: 20_000)
        let confirm = try player.apply(.report(epoch: 2, positionMs: 10_100, isPlaying: true, trackID: "t1"), at: 20_100, from: "laptop")
        #expect(confirm.changed && player.state.pendingTransfer == nil)
        let check = try player.apply(.confirmDeadline(epoch: 2), at: 23_000, from: nil)
        #expect(!check.changed && player.state.activeDevice == "laptop")
    }

    @Test func unconfirmedItGoesBackToTheSourceAtTheHandoverPosition() throws {
        var player = try playing()
        try player.run(.transfer(device: "laptop", play: nil), at: 20_000)
        // Early: nothing yet.
        #expect(!(try player.apply(.confirmDeadline(epoch: 2), at: 22_999, from: nil)).changed)
        // A report that does not play is no confirmation.
        _ = try? player.apply(.report(epoch: 2, positionMs: 10_000, isPlaying: true, trackID: "t9"), at: 21_000, from: "laptop")
        let back = try player.apply(.confirmDeadline(epoch: 2), at: 23_000, from: nil)
        #expect(back.lease == LeaseChange(epoch: 3, revoked: "laptop", granted: "phone", reason: .transferFailed))
        #expect(player.state.activeDevice == "phone" && player.state.isPlaying)
        #expect(player.state.positionMs == 10_000 && player.state.positionAt == 23_000, "the 3 s nobody heard are not skipped")
        #expect(player.state.pendingTransfer == nil)
        // The target's late confirmation is stale.
        #expect(player.reject(.report(epoch: 2, positionMs: 13_000, isPlaying: true, trackID: "t1"), at: 23_100, from: "laptop")?.code == .staleEpoch)
    }

    @Test func withTheSourceGoneTooPlaybackPauses() throws {
        var player = try playing()
        try player.run(.transfer(device: "laptop", play: nil), at: 20_000)
        player.devices["phone"] = .offline
        let t = try player.apply(.confirmDeadline(epoch: 2), at: 23_000, from: nil)
        #expect(t.lease == LeaseChange(epoch: 3, revoked: "laptop", granted: nil, reason: .transferFailed))
        #expect(player.state.activeDevice == nil && !player.state.isPlaying && player.state.positionMs == 10_000)
    }

    @Test func theTargetLostOrLettingGoBeforeConfirmingGoesBackToo() throws {
        var player = try playing()
        try player.run(.transfer(device: "laptop", play: nil), at: 20_000)
        let expired = try player.apply(.expire(device: "laptop", lostAt: 20_500), at: 21_000, from: nil)
        #expect(expired.lease?.reason == .transferFailed && player.state.activeDevice == "phone" && player.state.positionMs == 10_000)

        try player.run(.transfer(device: "laptop", play: nil), at: 30_000)
        let released = try player.apply(.release, at: 30_500, from: "laptop")
        #expect(released.lease == LeaseChange(epoch: 5, revoked: "laptop", granted: "phone", reason: .transferFailed))
        #expect(player.state.isPlaying)
    }

    @Test func aLaterTransferSupersedesTheDeadline() throws {
        var player = try playing()
        try player.run(.transfer(device: "laptop", play: nil), at: 20_000)
        try player.run(.transfer(device: "phone", play: nil), at: 21_000)
        #expect(player.state.pendingTransfer == nil)
        #expect(!(try player.apply(.confirmDeadline(epoch: 2), at: 23_000, from: nil)).changed)
    }

    @Test(arguments: [false, true])
    func devicesWithoutTheCapabilityOrPausedTransfersNeedNoConfirmation(paused: Bool) throws {
        var player = try playing()
        if paused {
            try player.run(.transfer(device: "laptop", play: false), at: 20_000)
        } else {
            player.confirming = []
            try player.run(.transfer(device: "laptop", play: nil), at: 20_000)
        }
        #expect(player.state.pendingTransfer == nil && player.last?.lease?.confirmBy == nil)
        #expect(!(try player.apply(.confirmDeadline(epoch: 2), at: 60_000, from: nil)).changed)
    }

    @Test func theDeadlineOfAnotherEpochChangesNothing() throws {
        var player = try playing()
        try player.run(.transfer(device: "laptop", play: nil), at: 20_000)
        #expect(!(try player.apply(.confirmDeadline(epoch: 1), at: 30_000, from: nil)).changed)
    }
}

extension ReducerTransferConfirmTests {
    @Test func anUndoneTransferRecordsNoPlayOnItsTarget() throws {
        var player = try playing()
        let handover = try player.run(.transfer(device: "laptop", play: nil), at: 20_000)
        #expect(handover.finishedPlays.map(\.device) == ["phone"], "the phone's play ends at the handover")
        let back = try player.apply(.confirmDeadline(epoch: 2), at: 23_000, from: nil)
        #expect(back.finishedPlays.isEmpty, "nothing was heard on the laptop")
        #expect(player.state.listening?.device == "phone" && player.state.listening?.startedAt == 23_000)
    }
}
