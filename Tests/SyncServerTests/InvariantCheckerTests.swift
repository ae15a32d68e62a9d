import DeviceSimKit
import PlaybackCore
import Testing

/// The invariant checker itself: each check must fail on the defect it exists for.
@Suite("invariant checker")
struct InvariantCheckerTests {
    /// One device's log: a connection, then these messages a millisecond apart.
    func history(_ messages: [ServerMessage]) -> DeviceHistory {
        var events: [DeviceEvent] = [.connected(server: 0, ns: 1_000_000)]
        for (index, message) in messages.enumerated() { events.append(.received(message, ns: UInt64(index + 2) * 1_000_000)) }
        return DeviceHistory(user: "u", device: "d0", events: events)
    }

    func state(_ version: Int64, volume: Int, op: String, request: String?) -> ServerMessage {
        .state(.init(state: PlayerState(epoch: 1, version: version, volume: volume), cause: .init(op: op, device: nil, request: request)))
    }

    func check(_ messages: [ServerMessage], commands: [SentCommand]) -> InvariantReport {
        var checker = InvariantChecker(graceMs: 3_000)
        checker.expectConvergence = false
        return checker.check(devices: [history(messages)], commands: commands, endNs: 100_000_000)
    }

    func volume(_ id: String, _ percent: Int, timed: Bool = true) -> SentCommand {
        SentCommand(id: id, user: "u", op: "volume", effect: .volume(percent), sentNs: 0, timed: timed)
    }

    @Test func aRestoreFromAnOlderSnapshotThatUndidAnAckedCommandIsALoss() {
        let report = check(
            [
                state(1, volume: 40, op: "volume", request: "c1"), .ack(.init(id: "c1", version: 1)),
                state(2, volume: 50, op: "volume", request: "c2"), .ack(.init(id: "c2", version: 2)),
                // Redis lost it; a node restored the snapshot of version 1, far above.
                state(1_002, volume: 40, op: "restored", request: nil),
            ], commands: [volume("c1", 40), volume("c2", 50)])
        #expect(report.commands.rolledBack == 1 && report.commands.lost == 1, "\(report.text)")
        #expect(report.commands.applied == 1, "c1 is still in the restored state")
        #expect(report.commands.rolledBackMaxAgeMs == 1, "undone a millisecond after its ack")
        #expect(report.total == 1)
    }

    @Test func aNewerSnapshotPuttingItBackIsNotALossButACommitOnTopOfTheUndoIs() {
        let putBack = check(
            [
                state(1, volume: 40, op: "volume", request: "c1"), .ack(.init(id: "c1", version: 1)),
                state(1_001, volume: 100, op: "restored", request: nil),  // an older snapshot first
                state(1_002, volume: 40, op: "restored", request: nil),  // then a daemon's newer one
                state(1_003, volume: 40, op: "seek", request: nil),
            ], commands: [volume("c1", 40)])
        #expect(putBack.commands.lost == 0 && putBack.total == 0, "\(putBack.text)")
        let committedOn = check(
            [
                state(1, volume: 40, op: "volume", request: "c1"), .ack(.init(id: "c1", version: 1)),
                state(1_001, volume: 100, op: "restored", request: nil),
                state(1_002, volume: 100, op: "seek", request: nil),
                state(1_003, volume: 40, op: "restored", request: nil),
            ], commands: [volume("c1", 40)])
        #expect(committedOn.commands.rolledBack == 1, "\(committedOn.text)")
    }

    @Test func aRecoveredStateIsARestoreOnlyWhenItsEpochJumped() {
        func recovered(_ version: Int64, volume: Int, epoch: Int64) -> ServerMessage {
            .state(.init(state: PlayerState(epoch: epoch, version: version, volume: volume), cause: .init(op: "recovered", device: nil, request: nil)))
        }
        // The bus was down while something else changed the volume: the state sent again is the current one.
        let missed = check([state(1, volume: 40, op: "volume", request: "c1"), .ack(.init(id: "c1", version: 1)), recovered(5, volume: 10, epoch: 2)],
                           commands: [volume("c1", 40)])
        #expect(missed.commands.lost == 0, "\(missed.text)")
        // A restore first seen through the recovery: its epoch jumped.
        let restore = check([state(1, volume: 40, op: "volume", request: "c1"), .ack(.init(id: "c1", version: 1)), recovered(1_200, volume: 10, epoch: 1_190)],
                            commands: [volume("c1", 40)])
        #expect(restore.commands.rolledBack == 1, "\(restore.text)")
    }

    @Test func aLaterCommandSupersedesWhatARestoreWouldHaveUndone() {
        let report = check(
            [
                state(1, volume: 40, op: "volume", request: "c1"), .ack(.init(id: "c1", version: 1)),
                state(2, volume: 60, op: "volume", request: "c2"), .ack(.init(id: "c2", version: 2)),
                state(1_002, volume: 60, op: "restored", request: nil),
            ], commands: [volume("c1", 40), volume("c2", 60)])
        #expect(report.commands.lost == 0 && report.commands.applied == 2, "\(report.text)")
        #expect(report.total == 0)
    }

    @Test func aCommandOfAnotherKindInBetweenDoesNotExplainAnUndoneVolume() {
        let report = check(
            [
                state(1, volume: 40, op: "volume", request: "c1"), .ack(.init(id: "c1", version: 1)),
                state(2, volume: 40, op: "seek", request: "c2"), .ack(.init(id: "c2", version: 2)),
                state(1_002, volume: 100, op: "restored", request: nil),
            ], commands: [volume("c1", 40), SentCommand(id: "c2", user: "u", op: "seek", effect: nil, sentNs: 0)])
        #expect(report.commands.rolledBack == 1, "\(report.text)")
    }

    @Test func aFinalCommandWithoutAnAckIsALivenessFailure() {
        let answered = check([state(1, volume: 77, op: "volume", request: "final-0"), .ack(.init(id: "final-0", version: 1))],
                             commands: [volume("final-0", 77, timed: false)])
        #expect(answered.livenessFailures == 0 && answered.total == 0)
        let silent = check([], commands: [volume("final-0", 77, timed: false)])
        #expect(silent.livenessFailures == 1 && silent.total == 1, "\(silent.text)")
        let refused = check([.error(.init(id: "final-0", error: PlaybackError(.unavailable, "down")))], commands: [volume("final-0", 77, timed: false)])
        #expect(refused.livenessFailures == 1, "refused is not acked")
        let timed = check([], commands: [volume("c9", 10)])
        #expect(timed.total == 0, "a command of the load lost with its connection is not a liveness failure")
    }
}
