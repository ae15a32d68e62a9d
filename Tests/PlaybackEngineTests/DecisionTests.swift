@testable import PlaybackCore
@testable import PlaybackEngine
import Testing

/// The engine's decisions as tables of values: no storage, no socket, no server.
private func playback(active: String? = nil, epoch: Int64 = 1, version: Int64 = 1) -> Playback {
    var playback = Playback.initial
    playback.activeDevice = active
    playback.epoch = epoch
    playback.version = version
    return playback
}

private let noDevices = DeviceDirectory(entries: [:], presence: [:], now: 0, retentionMs: 0)
private let user = UserIdentity(userID: "u")

@Suite("commit plan")
struct CommitPlanTests {
    struct Row: Sendable, CustomTestStringConvertible {
        var name: String
        var submission: Submission
        var outcome: Result<Transition, PlaybackError>
        var lease: CommandCall.LeaseOperation?
        var remembered: String?
        var listsDevices = false
        var testDescription: String { name }
    }

    static let before = playback(active: "phone", epoch: 3, version: 10)
    static func moved(_ active: String?, reason: LeaseReason, volumes: [String: Int]? = nil) -> Transition {
        var next = playback(active: active, epoch: 4, version: 11)
        next.deviceVolumes = volumes
        return Transition(
            playback: next, changed: true, queueChanged: false,
            lease: LeaseChange(epoch: 4, revoked: "phone", granted: active, reason: reason))
    }
    static let seeked = Transition(playback: playback(active: "phone", epoch: 3, version: 11), changed: true, queueChanged: false)
    static let unchanged = Transition(playback: before, changed: false, queueChanged: false)

    static let rows: [Row] = [
        Row(name: "a seek writes the state, keeps the lease, remembers its id, lists no devices",
            submission: Submission(user: user, input: .command(.seek(positionMs: 5_000)), device: "phone", requestID: "r1"),
            outcome: .success(seeked), lease: .keep, remembered: "r1"),
        Row(name: "a transfer moves the lease to the new holder and lists the devices",
            submission: Submission(user: user, input: .command(.transfer(device: "speaker", play: nil)), device: "phone", requestID: "r2"),
            outcome: .success(moved("speaker", reason: .transferred)), lease: .set(holder: "speaker|4", ttlMs: 9_000), remembered: "r2",
            listsDevices: true),
        Row(name: "a release clears the lease; a release is never remembered by id",
            submission: Submission(user: user, input: .release, device: "phone", requestID: "r3"),
            outcome: .success(moved(nil, reason: .released)), lease: .clear, remembered: nil, listsDevices: true),
        Row(name: "a command that changed nothing only confirms the version",
            submission: Submission(user: user, input: .command(.pause), device: "phone", requestID: "r4"),
            outcome: .success(unchanged), lease: nil, remembered: "r4"),
        Row(name: "a final refusal is remembered",
            submission: Submission(user: user, input: .command(.seek(positionMs: 5_000)), device: "phone", requestID: "r5"),
            outcome: .failure(PlaybackError(.trackNotFound, "no such track")), lease: nil, remembered: "r5"),
        Row(name: "a transient refusal is not remembered (trying again may succeed)",
            submission: Submission(user: user, input: .command(.seek(positionMs: 5_000)), device: "phone", requestID: "r6"),
            outcome: .failure(PlaybackError(.unavailable, "try again")), lease: nil, remembered: nil),
    ]

    @Test(arguments: rows)
    func plans(_ row: Row) {
        let plan = CommitPlan.make(
            row.submission, outcome: row.outcome, on: Self.before, directory: noDevices,
            cause: .init(op: "x", device: row.submission.device, request: row.submission.requestID),
            configuration: EngineConfiguration(), leaseTTLMs: 9_000, turn: nil)
        #expect(plan.call.expectedVersion == Self.before.version, "checked against the state it was decided on")
        #expect(plan.call.change?.lease == row.lease)
        #expect(plan.call.requestID == row.remembered)
        #expect((plan.call.change?.frame.devices != nil) == row.listsDevices)
        #expect((plan.transition != nil) == (row.lease != nil))
        #expect(plan.call.turn == nil)
    }

    @Test func anUndoneTransferIsToldAsTransferFailedNamingTheDeviceThatDidNotStart() {
        let undone = Self.moved("phone", reason: .transferFailed)
        let cause = CommitPlan.cause(of: undone, submitted: .init(op: "confirm_deadline", device: nil, request: "r"))
        #expect(cause == .init(op: "transfer_failed", device: "phone", request: "r"))
        #expect(CommitPlan.cause(of: Self.seeked, submitted: .init(op: "seek", device: "a", request: nil)).op == "seek")
    }

    @Test func aChangedVolumeListsTheDevices() {
        var next = Self.seeked
        next.playback.deviceVolumes = ["phone": 40]
        let plan = CommitPlan.make(
            Submission(user: user, input: .command(.volume(percent: 40)), device: "phone"), outcome: .success(next), on: Self.before,
            directory: noDevices, cause: .init(op: "volume", device: "phone", request: nil), configuration: EngineConfiguration(),
            leaseTTLMs: 9_000, turn: .init(token: "t", ttlMs: 300))
        #expect(plan.call.change?.frame.devices != nil)
        #expect(plan.call.turn?.token == "t", "the turn a command asked for goes with its call")
    }
}

@Suite("conflict policy")
struct ConflictPolicyTests {
    static let seen = (epoch: Int64(5), version: Int64(20))

    struct Row: Sendable, CustomTestStringConvertible {
        var name: String
        var current: Playback?
        var lost: Int
        var elapsedMs: Int64 = 0
        var expected: ConflictPolicy.Step
        var testDescription: String { name }
    }

    static let newer = playback(epoch: 5, version: 21)
    static var settling: Playback {
        var restored = playback(epoch: 9, version: 30)
        restored.restoredFrom = .init(source: 12, at: 30, settlesAt: 1_500)
        return restored
    }

    static let rows: [Row] = [
        Row(name: "another node committed first: again at once on the state the reply carried", current: newer, lost: 0,
            expected: .retry(on: newer, afterMs: 0)),
        Row(name: "still at once in the rounds before the turn", current: newer, lost: 2, expected: .retry(on: newer, afterMs: 0)),
        Row(name: "the conflict found when the turn was taken: again at once", current: newer, lost: 3,
            expected: .retry(on: newer, afterMs: 0)),
        Row(name: "the state went back below what this node saw: reload (and restore above)", current: playback(epoch: 5, version: 19),
            lost: 0, expected: .reload),
        Row(name: "an older epoch went back too", current: playback(epoch: 4, version: 25), lost: 0, expected: .reload),
        Row(name: "a restore still settling: reload (offering this node's newer snapshot)", current: settling, lost: 0, expected: .reload),
        Row(name: "the storage has no state: reload (and restore)", current: nil, lost: 0, expected: .reload),
        Row(name: "after the last round: refused with a hint", current: newer, lost: ContentionBackoff.maxRounds - 1,
            expected: .giveUp(retryAfterMs: ContentionBackoff.capMs)),
        Row(name: "after trying for long enough: refused with a hint", current: newer, lost: 4, elapsedMs: ConflictPolicy.giveUpAfterMs,
            expected: .giveUp(retryAfterMs: ContentionBackoff.capMs)),
    ]

    @Test(arguments: rows)
    func decides(_ row: Row) {
        let rounds = ConflictPolicy.Rounds(lost: row.lost, startedAt: 1_000)
        #expect(ConflictPolicy.afterConflict(row.current, seen: Self.seen, rounds: rounds, now: 1_000 + row.elapsedMs, random: 0.5) == row.expected)
    }

    @Test func aCommandAsksForTheTurnAfterAFewLostRounds() {
        #expect(!ConflictPolicy.Rounds(lost: ConflictPolicy.turnAfterRounds - 1, startedAt: 0).asksForTurn)
        #expect(ConflictPolicy.Rounds(lost: ConflictPolicy.turnAfterRounds, startedAt: 0).asksForTurn)
    }

    @Test func losingEvenWithTheTurnBacksOffWithJitter() {
        let rounds = ConflictPolicy.Rounds(lost: ConflictPolicy.turnAfterRounds + 3, startedAt: 0)
        guard case .retry(_, let low) = ConflictPolicy.afterConflict(Self.newer, seen: Self.seen, rounds: rounds, now: 0, random: 0),
            case .retry(_, let high) = ConflictPolicy.afterConflict(Self.newer, seen: Self.seen, rounds: rounds, now: 0, random: 1)
        else {
            Issue.record("a lost round with the turn is retried")
            return
        }
        #expect(low == 0 && high > 0 && high <= ContentionBackoff.capMs)
    }

    @Test(arguments: [(Int64(300), 0.0, Int64(1)), (300, 1.0, ConflictPolicy.turnPollMs), (2, 1.0, 2)])
    func aTurnHeldElsewhereIsWaitedForBrieflyNeverPastItsEnd(heldMs: Int64, random: Double, expected: Int64) {
        let step = ConflictPolicy.afterTurnHeld(forMs: heldMs, rounds: .init(lost: 5, startedAt: 0), now: 10, random: random)
        #expect(step == .wait(ms: expected))
    }

    @Test func waitingForTurnsEndsAfterTheLongestTry() {
        let step = ConflictPolicy.afterTurnHeld(forMs: 200, rounds: .init(lost: 5, startedAt: 0), now: ConflictPolicy.giveUpAfterMs, random: 0.5)
        #expect(step == .giveUp(retryAfterMs: 200))
    }
}

@Suite("disconnect rule")
struct DisconnectRuleTests {
    @Test(arguments: [
        (DisconnectKind.released, true, true, DisconnectRule.release),
        (.lost, true, true, .grace),
        (.replaced, true, true, .keep),
        (.released, false, true, .keep),
        (.lost, false, true, .keep),
        (.released, true, false, .keep),
        (.lost, true, false, .keep),
    ])
    func decides(kind: DisconnectKind, left: Bool, heldLease: Bool, expected: DisconnectRule) {
        #expect(DisconnectRule.decide(kind, left: left, heldLease: heldLease) == expected)
    }
}

@Suite("upkeep plan")
struct UpkeepPlanTests {
    @Test(arguments: [
        (PresenceCheck?.none, Set<String>?.some(["a"]), UpkeepPlan.Directory.keep),
        (.lost, Set(["a"]), .register),
        (.lost, nil, .register),
        (.online(["a"]), Set(["a"]), .keep),
        (.online(["a", "b"]), Set(["a"]), .reload),
        (.online([]), Set(["a"]), .reload),
        (.online(["a"]), nil, .keep),
    ])
    func afterThePresenceRefresh(refresh: PresenceCheck?, cachedOnline: Set<String>?, expected: UpkeepPlan.Directory) {
        #expect(UpkeepPlan.directory(after: refresh, cachedOnline: cachedOnline) == expected)
    }

    @Test func leaseDuties() {
        var pending = playback(active: "speaker")
        pending.pendingTransfer = .init(source: "phone", confirmBy: 1_000)
        #expect(UpkeepPlan.duties(for: pending, holderHere: true, now: 999) == .init(checkConfirmation: false, renew: true))
        #expect(UpkeepPlan.duties(for: pending, holderHere: false, now: 1_000) == .init(checkConfirmation: true, renew: false))
        #expect(UpkeepPlan.duties(for: playback(active: nil), holderHere: false, now: 0) == .init())
    }

    struct SweepRow: Sendable, CustomTestStringConvertible {
        var name: String
        var holder: String?
        var lostAt: Int64?
        var here = false
        var alive = false
        var expected: UpkeepPlan.Sweep
        var asksWhetherAlive: Bool
        var testDescription: String { name }
    }

    @Test(arguments: [
        SweepRow(name: "held: only settle", holder: "a", lostAt: nil, expected: .settle, asksWhetherAlive: false),
        SweepRow(name: "nobody's: only settle", holder: nil, lostAt: 5, expected: .settle, asksWhetherAlive: false),
        SweepRow(name: "lapsed, holder here: take it back", holder: "a", lostAt: 5, here: true, expected: .takeBack, asksWhetherAlive: false),
        SweepRow(name: "lapsed, holder on a live node: defer", holder: "a", lostAt: 5, alive: true, expected: .deferToHolder, asksWhetherAlive: true),
        SweepRow(name: "lapsed, holder gone: expire at the loss", holder: "a", lostAt: 5, expected: .expire(device: "a", lostAt: 5),
                 asksWhetherAlive: true),
    ])
    func sweeps(_ row: SweepRow) async {
        var asked = false
        let sweep = await UpkeepPlan.sweep(holder: row.holder, lostAt: row.lostAt, holderHere: row.here) {
            asked = true
            return row.alive
        }
        #expect(sweep == row.expected)
        #expect(asked == row.asksWhetherAlive, "the storage is asked only when it decides")
    }
}

@Suite("restore floor")
struct RestoreFloorTests {
    static let now: Int64 = 100_000
    static let settle: Int64 = 1_000

    @Test func aNewUserIsStoredEmptyAndNotAnnounced() {
        #expect(RestoreFloor.choose(.fresh, stale: nil, mark: nil, now: Self.now, settleMs: Self.settle) == .put(.initial, announce: false))
    }

    @Test func aSnapshotIsPutBackSettlingAndAnnounced() {
        var snapshot = playback(epoch: 1_007, version: 1_010)
        snapshot.restoredFrom = .init(source: 10, at: 1_010)
        guard case .put(let put, announce: true) = RestoreFloor.choose(.snapshot(snapshot), stale: nil, mark: nil, now: Self.now, settleMs: Self.settle)
        else {
            Issue.record("a snapshot is put back and announced")
            return
        }
        #expect((put.epoch, put.version) == (1_007, 1_010))
        #expect(put.restoredFrom == .init(source: 10, at: 1_010, settlesAt: Self.now + Self.settle))
    }

    @Test func theFloorRaisesAnOlderSnapshotAboveWhatThisNodeSawByTheTimeSince() {
        let mark = HighWaterMarks.Mark(epoch: 50, version: 80, at: Self.now - 2_000)
        guard case .put(let put, _) = RestoreFloor.choose(.snapshot(playback(epoch: 9, version: 70)), stale: nil, mark: mark, now: Self.now, settleMs: 0)
        else {
            Issue.record("put back")
            return
        }
        let jump = Durability.resumeMargin + 2_000
        #expect((put.epoch, put.version) == (50 + jump, 80 + jump))
    }

    @Test func aNewerSnapshotThanTheFloorKeepsItsOwnNumbers() {
        let mark = HighWaterMarks.Mark(epoch: 5, version: 8, at: Self.now)
        let snapshot = playback(epoch: 9_000, version: 9_000)
        guard case .put(let put, _) = RestoreFloor.choose(.snapshot(snapshot), stale: nil, mark: mark, now: Self.now, settleMs: 0) else {
            Issue.record("put back")
            return
        }
        #expect((put.epoch, put.version) == (9_000, 9_000))
    }

    @Test func whatTheStorageStillHoldsBeatsAnOlderSnapshotAndAnUnreachableDatabase() {
        let stale = playback(active: "phone", epoch: 20, version: 40)
        for found in [Durability.Restored.snapshot(playback(epoch: 10, version: 30)), .unreachable(playback(epoch: 0, version: 0)), .fresh] {
            guard case .put(let put, announce: true) = RestoreFloor.choose(found, stale: stale, mark: nil, now: Self.now, settleMs: 0) else {
                Issue.record("\(found): put back")
                continue
            }
            #expect(put.activeDevice == "phone" && put.version == 40, "\(found)")
            #expect(put.restoredFrom?.source == 40, "restored from the stale state's own version")
        }
    }

    @Test func aServedUserWaitsForAnUnreachableDatabaseAnUnknownOneStartsEmptyAboveTheClock() {
        let empty = playback(epoch: 5_000, version: 5_000)
        let served = RestoreFloor.choose(.unreachable(empty), stale: nil, mark: .init(epoch: 3, version: 4, at: 0), now: Self.now, settleMs: 0)
        guard case .wait(let error) = served else {
            Issue.record("a served user waits")
            return
        }
        #expect(error.code == .unavailable && error.retryAfterMs != nil)
        guard case .put(let put, announce: true) = RestoreFloor.choose(.unreachable(empty), stale: nil, mark: nil, now: Self.now, settleMs: 0) else {
            Issue.record("an unknown user starts empty")
            return
        }
        #expect((put.epoch, put.version) == (5_000, 5_000))
    }

    @Test(arguments: [
        (Int64(5), Int64(20), false), (5, 19, true), (4, 25, true), (6, 21, false),
    ])
    func wentBack(epoch: Int64, version: Int64, expected: Bool) {
        #expect(RestoreFloor.wentBack(playback(epoch: epoch, version: version), seen: (5, 20)) == expected)
    }
}

@Suite("the node's cache of a user")
struct UserCacheTests {
    @Test func aDirectoryReadThatAJoinOvertookIsNotKept() {
        let fanout = UserFanout()
        fanout.remember(Playback.initial)
        let mark = fanout.directoryMark
        // The upkeep's read left before the phone joined, and came back after: it must not undo the join.
        let joined = DeviceDirectory(entries: ["phone": StoredDevice(name: "Phone", kind: .smartphone, lastSeen: 5, session: "s", node: "n")],
                                     presence: ["phone": 60_000], now: 5, retentionMs: 60_000)
        fanout.remember(directory: joined)
        #expect(!fanout.remember(directory: noDevices, readAt: mark))
        #expect(fanout.cached()?.directory.records["phone"]?.online == true)
        #expect(fanout.remember(directory: noDevices, readAt: fanout.directoryMark), "a read after the last change is kept")
        #expect(fanout.cached()?.directory.records.isEmpty == true)
    }
}

@Suite("device lists from the bus")
struct DeviceListTests {
    static func info(_ id: String, online: Bool) -> DeviceInfo {
        DeviceInfo(id: id, name: id, kind: .smartphone, online: online, active: false, lastSeen: 1, volumePercent: 100, rttMs: nil, capabilities: [])
    }

    @Test func aListOlderThanALocalJoinKeepsTheDevicesConnectedHere() {
        // This node knows phone and laptop joined; the list of the phone's own join comes after.
        let known = DeviceDirectory([Self.info("phone", online: true), Self.info("laptop", online: true), Self.info("tv", online: true)])
        var list = DeviceDirectory([Self.info("phone", online: true), Self.info("tv", online: false)])
        list.keepConnected(["phone", "laptop"], as: known)
        #expect(list.isOnline("laptop"), "connected here: kept")
        #expect(!list.isOnline("tv"), "another node's device: as the list says")
        #expect(list.records.count == 3)
    }
}
