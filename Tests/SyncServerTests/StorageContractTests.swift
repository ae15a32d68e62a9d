import Foundation
import NIOCore
import PlaybackCore
@testable import PlaybackEngine
import RedisClient
import Testing

/// One storage contract, the same cases against every storage: `MemoryStorage`, `RedisStorage` on
/// one Redis (`scripts/test`'s first stage) and on the local cluster (its cluster stage runs this
/// suite with the cluster's URL). The Lua and the Swift keep the same rules only if these pass on
/// all three. (The lease's compare-and-set, presence and sweeps: `LeaseCorrectnessTests`, run the same way.)
@Suite("storage contract")
struct StorageContractTests {
    static func user(_ name: String) -> String { "\(name)-\(UInt32.random(in: 0...UInt32.max))" }

    static func call(
        expecting version: Int64, committing next: Playback? = nil, lease: CommandCall.LeaseOperation = .keep, requestID: String? = nil,
        capacity: Int = 100, turn: String? = nil, turnTTLMs: Int64 = 300
    ) -> CommandCall {
        let change = next.map { next in
            CommandCall.Change(
                playback: next, json: ByteBuffer(bytes: PlaybackJSON.encode(next)), lease: lease,
                frame: BusMessage(event: PlaybackEvent(
                    state: next.playerState(includeQueue: false), queueChanged: false, lease: nil,
                    cause: .init(op: "seek", device: nil, request: requestID)).prepared))
        }
        return CommandCall(
            expectedVersion: version, requestID: requestID, answer: .success(Receipt(version: next?.version ?? version, entry: nil, changed: true)),
            answerTTLMs: 60_000, answerCapacity: capacity, change: change, turn: turn.map { .init(token: $0, ttlMs: turnTTLMs) })
    }

    static func send(_ storage: any PlaybackStorage, user: String, _ call: CommandCall) async throws -> CommandReply {
        try await withCheckedThrowingContinuation { continuation in
            storage.command(user: user, call) { continuation.resume(with: $0) }
        }
    }

    static func at(_ version: Int64, epoch: Int64 = 1, active: String? = nil) -> Playback {
        LeaseCorrectnessTests.playback(active: active, epoch: epoch, version: version)
    }

    @Test func aCommandCommitsAtItsVersionAndAnOtherVersionGetsTheCurrentState() async throws {
        for (name, storage) in try LeaseCorrectnessTests.storages() {
            let user = Self.user("commit")
            guard case .conflict(nil, _) = try await Self.send(storage, user: user, Self.call(expecting: 3, committing: Self.at(4))) else {
                Issue.record("\(name): a user the storage has no state of is a conflict without a state")
                continue
            }
            guard case .done = try await Self.send(storage, user: user, Self.call(expecting: 0, committing: Self.at(1))) else {
                Issue.record("\(name): the first commit lands at version 0")
                continue
            }
            #expect(try await storage.loadPlayback(user: user)?.version == 1, "\(name)")
            let stale = try await Self.send(storage, user: user, Self.call(expecting: 0, committing: Self.at(1)))
            guard case .conflict(let current?, _) = stale else {
                Issue.record("\(name): a commit on an old version is refused with the current state, got \(stale)")
                continue
            }
            #expect(current.version == 1, "\(name)")
            // A command that changed nothing confirms the version, and writes nothing.
            guard case .done = try await Self.send(storage, user: user, Self.call(expecting: 1)) else {
                Issue.record("\(name): a confirm at the current version is done")
                continue
            }
            guard case .conflict = try await Self.send(storage, user: user, Self.call(expecting: 0)) else {
                Issue.record("\(name): a confirm at an old version is a conflict")
                continue
            }
            #expect(try await storage.loadPlayback(user: user)?.version == 1, "\(name)")
            await storage.shutdown()
        }
    }

    @Test func aRememberedRequestIsAnsweredAgainAndTheWindowHasACapacity() async throws {
        for (name, storage) in try LeaseCorrectnessTests.storages() {
            let user = Self.user("ids")
            let first = Self.call(expecting: 0, committing: Self.at(1), requestID: "r1", capacity: 1)
            guard case .done = try await Self.send(storage, user: user, first) else {
                Issue.record("\(name): committed")
                continue
            }
            let again = try await Self.send(storage, user: user, Self.call(expecting: 0, committing: Self.at(1), requestID: "r1", capacity: 1))
            guard case .known(.success(let receipt)) = again else {
                Issue.record("\(name): the same id is answered from memory, got \(again)")
                continue
            }
            #expect(receipt.version == 1, "\(name)")
            let full = try await Self.send(storage, user: user, Self.call(expecting: 1, committing: Self.at(2), requestID: "r2", capacity: 1))
            guard case .full(let retryAfterMs) = full else {
                Issue.record("\(name): a new id past the capacity is refused, got \(full)")
                continue
            }
            // The window is 60 s; an id may be remembered up to a tenth longer (RequestBuckets).
            #expect(retryAfterMs > 0 && retryAfterMs <= 66_000, "\(name): \(retryAfterMs)")
            #expect(try await storage.loadPlayback(user: user)?.version == 1, "\(name): nothing written")
            await storage.shutdown()
        }
    }

    /// Redis keeps a user's answers in a hash per tenth of the window; those the previous release
    /// kept (a key per id) are still answered from while they last, and an entry or an error comes
    /// back as it went in.
    @Test func answersOfThePreviousReleaseAndEveryKindOfAnswerAreRememberedOnRedis() async throws {
        for (name, storage) in try LeaseCorrectnessTests.storages() where name == "redis" {
            let user = Self.user("compact")
            let url = try RedisConfiguration(url: EngineKind.redisURL)
            let database = url.isCluster ? 0 : 7
            let legacy = try runProgram("/usr/bin/redis-cli", (url.isCluster ? ["-c"] : []) + [
                "-h", url.host, "-p", String(url.port), "-n", String(database), "SET", "req:{u:\(user)}:old", #"{"version":3,"entry":"e7"}"#, "PX", "60000",
            ])
            #expect(legacy.code == 0, "\(legacy.output)")
            let old = try await Self.send(storage, user: user, Self.call(expecting: 0, committing: Self.at(1), requestID: "old"))
            guard case .known(.success(let oldReceipt)) = old else {
                Issue.record("an id the previous release remembered is answered from it: \(old)")
                continue
            }
            #expect(oldReceipt.version == 3 && oldReceipt.entry == "e7")

            var withEntry = Self.call(expecting: 0, committing: Self.at(1), requestID: "entry")
            withEntry.answer = .success(Receipt(version: 1, entry: "e42", changed: true))
            guard case .done = try await Self.send(storage, user: user, withEntry) else {
                Issue.record("committed")
                continue
            }
            let entry = try await Self.send(storage, user: user, Self.call(expecting: 1, committing: Self.at(2), requestID: "entry"))
            guard case .known(.success(let entryReceipt)) = entry else {
                Issue.record("the answer with an entry is remembered: \(entry)")
                continue
            }
            #expect(entryReceipt.version == 1 && entryReceipt.entry == "e42")

            var refused = Self.call(expecting: 1, requestID: "refused")
            refused.answer = .failure(PlaybackError(.trackNotFound, "no track t9999"))
            guard case .done = try await Self.send(storage, user: user, refused) else {
                Issue.record("confirmed")
                continue
            }
            let error = try await Self.send(storage, user: user, Self.call(expecting: 1, committing: Self.at(2), requestID: "refused"))
            guard case .known(.failure(let remembered)) = error else {
                Issue.record("the refusal is remembered: \(error)")
                continue
            }
            #expect(remembered.code == .trackNotFound && remembered.message == "no track t9999")
            await storage.shutdown()
        }
    }

    @Test func whileACommandHasTheTurnTheOthersWaitAndItsCommitEndsIt() async throws {
        for (name, storage) in try LeaseCorrectnessTests.storages() {
            let user = Self.user("turn")
            _ = try await Self.send(storage, user: user, Self.call(expecting: 0, committing: Self.at(1)))
            // A asked for the turn on an old state: it gets the turn and the current state. (A turn
            // long enough that a loaded machine cannot end it before the test looks.)
            let a = Self.call(expecting: 0, committing: Self.at(1), turn: "a", turnTTLMs: 10_000)
            guard case .conflict(let current?, _) = try await Self.send(storage, user: user, a) else {
                Issue.record("\(name): the conflict still carries the state")
                continue
            }
            // B, with or without a turn of its own, waits; it commits nothing meanwhile.
            for other in [nil, "b"] as [String?] {
                let reply = try await Self.send(storage, user: user, Self.call(expecting: 1, committing: Self.at(2), turn: other))
                guard case .turnHeld(let heldMs) = reply else {
                    Issue.record("\(name): \(other ?? "a command without a turn") waits for A's turn, got \(reply)")
                    continue
                }
                #expect(heldMs > 0 && heldMs <= 10_000, "\(name): \(heldMs)")
            }
            #expect(try await storage.loadPlayback(user: user)?.version == 1, "\(name)")
            guard case .done = try await Self.send(
                storage, user: user, Self.call(expecting: current.version, committing: Self.at(2), turn: "a", turnTTLMs: 10_000))
            else {
                Issue.record("\(name): A commits on the state it was given")
                continue
            }
            let after = try await Self.send(storage, user: user, Self.call(expecting: 2, committing: Self.at(3)))
            guard case .done = after else {
                Issue.record("\(name): A's commit ended the turn, got \(after)")
                continue
            }
            await storage.shutdown()
        }
    }

    @Test func aTurnWhoseCommandNeverCameBackLapses() async throws {
        for (name, storage) in try LeaseCorrectnessTests.storages() {
            let user = Self.user("turn-lapse")
            _ = try await Self.send(storage, user: user, Self.call(expecting: 0, committing: Self.at(1)))
            _ = try await Self.send(storage, user: user, Self.call(expecting: 0, turn: "dead", turnTTLMs: 3_000))
            guard case .turnHeld = try await Self.send(storage, user: user, Self.call(expecting: 1, committing: Self.at(2))) else {
                Issue.record("\(name): the turn is held at first")
                continue
            }
            try await Task.sleep(for: .milliseconds(3_300))
            let reply = try await Self.send(storage, user: user, Self.call(expecting: 1, committing: Self.at(2)))
            guard case .done = reply else {
                Issue.record("\(name): the turn lapsed, got \(reply)")
                continue
            }
            await storage.shutdown()
        }
    }

    @Test func aCommitMovesAndClearsTheLease() async throws {
        for (name, storage) in try LeaseCorrectnessTests.storages() {
            let user = Self.user("lease")
            _ = try await Self.send(
                storage, user: user, Self.call(expecting: 0, committing: Self.at(1, epoch: 2, active: "phone"), lease: .set(holder: "phone|2", ttlMs: 10_000)))
            #expect(try await storage.leaseLapse(user: user, epoch: 2) == .held, "\(name)")
            #expect(try await storage.renewLease(user: user, holder: "phone|2", epoch: 2, ttlMs: 10_000, seen: 5), "\(name)")
            _ = try await Self.send(storage, user: user, Self.call(expecting: 1, committing: Self.at(2, epoch: 3), lease: .clear))
            #expect(try await storage.leaseLapse(user: user, epoch: 3) == .lapsed(seen: nil), "\(name)")
            #expect(try await !storage.renewLease(user: user, holder: "phone|2", epoch: 2, ttlMs: 10_000, seen: 6), "\(name): a cleared lease is not renewed")
            await storage.shutdown()
        }
    }

    @Test func aRestoreGoesOnlyIntoAnEmptySlotOrOverTheVersionItReplaces() async throws {
        for (name, storage) in try LeaseCorrectnessTests.storages() {
            let user = Self.user("restore")
            #expect(try await storage.restore(user: user, playback: Self.at(10), holder: nil, ttlMs: 1_000, frame: nil), "\(name): empty slot")
            #expect(try await !storage.restore(user: user, playback: Self.at(11), holder: nil, ttlMs: 1_000, frame: nil), "\(name): taken")
            #expect(try await !storage.restore(user: user, playback: Self.at(20), holder: nil, ttlMs: 1_000, frame: nil, replacing: 9), "\(name)")
            #expect(try await storage.restore(
                user: user, playback: Self.at(20, epoch: 4, active: "tv"), holder: "tv|4", ttlMs: 10_000, frame: nil, replacing: 10), "\(name)")
            #expect(try await storage.loadPlayback(user: user)?.version == 20, "\(name)")
            #expect(try await storage.leaseLapse(user: user, epoch: 4) == .held, "\(name): with its lease")
            await storage.shutdown()
        }
    }

    @Test func theDeviceCapCountsOnlineDevicesAndALeaveNeedsTheSessionTheEntryNames() async throws {
        for (name, storage) in try LeaseCorrectnessTests.storages() {
            let user = Self.user("cap")
            let now = ServerClock.nowMs()
            func entry(_ session: String?) -> StoredDevice { StoredDevice(name: "D", kind: .computer, lastSeen: now, session: session, node: "n") }
            let frame = BusMessage(devices: [])
            #expect(try await storage.join(user: user, device: "a", entry: entry("s1"), presenceUntil: now + 60_000, cap: 1, frame: frame), "\(name)")
            #expect(try await !storage.join(user: user, device: "b", entry: entry("s2"), presenceUntil: now + 60_000, cap: 1, frame: frame), "\(name): cap")
            #expect(try await storage.join(user: user, device: "a", entry: entry("s3"), presenceUntil: now + 60_000, cap: 1, frame: frame), "\(name): a again")
            #expect(try await !storage.leave(user: user, device: "a", session: "s1", entry: entry(nil), frame: frame), "\(name): an old session")
            #expect(try await storage.leave(user: user, device: "a", session: "s3", entry: entry(nil), frame: frame), "\(name)")
            #expect(try await storage.join(user: user, device: "b", entry: entry("s4"), presenceUntil: now + 60_000, cap: 1, frame: frame), "\(name): a left")
            let directory = try await storage.loadDirectory(user: user, now: now, retentionMs: 60_000)
            #expect(directory.records["b"]?.online == true && directory.records["a"] == nil, "\(name): past the cap the offline one is forgotten")
            await storage.shutdown()
        }
    }
}
