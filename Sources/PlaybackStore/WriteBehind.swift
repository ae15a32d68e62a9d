import DequeModule
import Foundation
import Logging
import Metrics
import PlaybackCore
import Synchronization

/// Writes to PostgreSQL behind the command path: commands never wait for it.
///
/// Snapshots are coalesced per user (at most one write per `snapshotIntervalMs`, except urgent
/// ones: lease changes and shutdown); plays, device sightings and users are batched. When
/// PostgreSQL is down everything stays queued (bounded: past the limits the oldest plays are
/// dropped and counted) and is written once it is back, with exponential backoff meanwhile.
public final class WriteBehind: Sendable {
    public struct Limits: Sendable {
        public var snapshotIntervalMs: Int64 = 1_000
        public var maxPendingSnapshots = 200_000
        public var maxPendingPlays = 100_000
        public var maxPendingDevices = 100_000
        public var batchSize = 1_000
        public var tickMs: Int64 = 100
        public var maxBackoffMs: Int64 = 2_000

        public init() {}
    }

    struct PendingSnapshot {
        var playback: Playback
        var takenAt: Int64
        var dueAt: Int64
    }

    struct Queues {
        var snapshots: [String: PendingSnapshot] = [:]
        /// Users whose snapshot was written recently, and when: the next one waits for the interval.
        var lastWritten: [String: Int64] = [:]
        var plays: Deque<HistoryRow> = []
        /// Plays being written right now (neither queued nor known to be in PostgreSQL).
        var playsInFlight: [HistoryRow] = []
        /// Snapshots being written right now, by user (restores read them too).
        var snapshotsInFlight: [String: PendingSnapshot] = [:]
        var devices: [String: StoredDeviceRow] = [:]
        var users: [String: StoredUser] = [:]
        var lastError: StoreError?
        var retryAt: Int64 = 0
        var backoffMs: Int64 = 0

        var isEmpty: Bool { snapshots.isEmpty && plays.isEmpty && devices.isEmpty && users.isEmpty }
    }

    struct Batch {
        var snapshots: [PlaybackSnapshot] = []
        var plays: [HistoryRow] = []
        var devices: [StoredDeviceRow] = []
        var users: [StoredUser] = []

        var isEmpty: Bool { snapshots.isEmpty && plays.isEmpty && devices.isEmpty && users.isEmpty }
    }

    public let store: PlaybackStore
    let limits: Limits
    let clock: @Sendable () -> Int64
    let logger: Logger
    private let queues = Mutex(Queues())
    private let snapshotWrites = Atomic<Int>(0)
    private let rowsSetAside = Atomic<Int>(0)
    /// Held while a batch is being written, so a shutdown flush does not run beside the loop.
    private let writing = WriteGate()
    private let writtenHandler = Mutex<(@Sendable ([PlaybackSnapshot]) -> Void)?>(nil)

    /// `handler` hears of every batch of snapshots once PostgreSQL holds them (users whose state
    /// may now leave Redis when idle).
    public func onSnapshotsWritten(_ handler: @escaping @Sendable ([PlaybackSnapshot]) -> Void) {
        writtenHandler.withLock { $0 = handler }
    }

    public init(
        store: PlaybackStore, limits: Limits = Limits(), logger: Logger,
        clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1_000) }
    ) {
        self.store = store
        self.limits = limits
        self.logger = logger
        self.clock = clock
    }

    // MARK: Enqueueing (never blocks on PostgreSQL)

    /// The user's playback changed; `urgent` writes it at the next tick (lease changes, recovery).
    public func snapshot(user: String, playback: Playback, urgent: Bool) {
        let now = clock()
        let dropped: Bool = queues.withLock { queues in
            if var pending = queues.snapshots[user] {
                guard (pending.playback.epoch, pending.playback.version) <= (playback.epoch, playback.version) else { return false }
                pending.playback = playback
                pending.takenAt = now
                if urgent { pending.dueAt = min(pending.dueAt, now) }
                queues.snapshots[user] = pending
                return false
            }
            guard queues.snapshots.count < limits.maxPendingSnapshots else { return true }
            let earliest = (queues.lastWritten[user] ?? .min) &+ limits.snapshotIntervalMs
            queues.snapshots[user] = PendingSnapshot(playback: playback, takenAt: now, dueAt: urgent ? now : max(now, earliest))
            return false
        }
        if dropped { Counter(label: "playback_store_dropped_total", dimensions: [("kind", "snapshot")]).increment() }
    }

    /// A play ended.
    public func play(_ row: HistoryRow) {
        let dropped: Bool = queues.withLock { queues in
            queues.plays.append(row)
            guard queues.plays.count > limits.maxPendingPlays else { return false }
            queues.plays.removeFirst()
            return true
        }
        if dropped { Counter(label: "playback_store_dropped_total", dimensions: [("kind", "play")]).increment() }
    }

    /// A device was seen (connected or disconnected).
    public func device(_ row: StoredDeviceRow) {
        queues.withLock { queues in
            let key = row.userID + "\u{1F}" + row.deviceID
            guard queues.devices[key] != nil || queues.devices.count < limits.maxPendingDevices else { return }
            queues.devices[key] = row
        }
    }

    /// A user was seen with these token claims.
    public func user(_ user: StoredUser) {
        queues.withLock { queues in
            guard queues.users[user.id] != user, queues.users.count < limits.maxPendingDevices else { return }
            queues.users[user.id] = user
        }
    }

    // MARK: State

    /// False while the last write failed.
    public var isHealthy: Bool { queues.withLock { $0.lastError == nil } }

    public var lastError: StoreError? { queues.withLock { $0.lastError } }

    /// Snapshots written since start (one per user per write).
    public var snapshotsWritten: Int { snapshotWrites.load(ordering: .relaxed) }
    /// Rows PostgreSQL refused on their own and this writer set aside (also in `playback_store_rejected_total`).
    public var setAside: Int { rowsSetAside.load(ordering: .relaxed) }

    /// Items not yet written (queued or being written), by kind.
    public var pending: (snapshots: Int, plays: Int, devices: Int) {
        queues.withLock { queues in
            (Set(queues.snapshotsInFlight.keys).union(queues.snapshots.keys).count, queues.plays.count + queues.playsInFlight.count,
             queues.devices.count)
        }
    }

    /// The user's plays not yet known to be in PostgreSQL, oldest first (reads merge them in).
    public func unwrittenPlays(user: String) -> [HistoryRow] {
        queues.withLock { queues in
            (queues.playsInFlight + queues.plays).filter { $0.userID == user }
        }
    }

    /// The newest snapshot not yet known to be in PostgreSQL for `user` (queued, or being written),
    /// with when it was taken, if any: recovery prefers it to PostgreSQL's.
    public func pendingSnapshot(user: String) -> (playback: Playback, takenAt: Int64)? {
        queues.withLock { queues in
            let newest = [queues.snapshots[user], queues.snapshotsInFlight[user]].compactMap { $0 }
                .max { ($0.playback.epoch, $0.playback.version) < ($1.playback.epoch, $1.playback.version) }
            return newest.map { ($0.playback, $0.takenAt) }
        }
    }

    // MARK: Writing

    /// Writes due items every tick until cancelled.
    public func run() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(limits.tickMs))
            await writeDue(all: false)
        }
    }

    /// Writes everything pending now, regardless of coalescing; gives up after `timeout`.
    /// Returns true when nothing is left.
    @discardableResult
    public func flush(timeout: Duration = .seconds(5)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            queues.withLock { $0.retryAt = 0 }
            await writeDue(all: true)
            if queues.withLock({ $0.isEmpty }) { return true }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return queues.withLock { $0.isEmpty }
    }

    private func writeDue(all: Bool) async {
        await writing.run {
            let now = clock()
            let batch = take(now: now, all: all)
            report()
            guard !batch.isEmpty else { return }
            do throws(StoreError) {
                try await store.upsertUsers(batch.users)
                try await store.upsertDevices(batch.devices)
                try await store.saveSnapshots(batch.snapshots)
                try await store.insertPlays(batch.plays)
                succeeded(batch, now: now)
            } catch where error.code == .rejected {
                // PostgreSQL refused the data itself (not an outage): one bad row must not hold up the rest.
                await isolate(batch, now: now)
            } catch {
                // Stopping (the task was cancelled mid-write): queued again for the final flush, not an outage.
                if Task.isCancelled { requeue(batch, now: now) } else { failed(batch, error: error, now: now) }
            }
            report()
        }
    }

    /// Writes a refused batch row by row: a row PostgreSQL refuses on its own (say, a value its
    /// column cannot hold) is set aside, logged and counted (`playback_store_rejected_total`); the
    /// others are written, or queued again if PostgreSQL went away meanwhile.
    private func isolate(_ batch: Batch, now: Int64) async {
        var written = Batch()
        var retry = Batch()
        var outage: StoreError?
        func alone<Row>(
            _ rows: [Row], kind: String, describe: (Row) -> String, _ write: (Row) async throws(StoreError) -> Void,
            written: (Row) -> Void, retry: (Row) -> Void
        ) async {
            for row in rows {
                if outage != nil {
                    retry(row)
                    continue
                }
                do throws(StoreError) {
                    try await write(row)
                    written(row)
                } catch where error.code == .rejected {
                    Counter(label: "playback_store_rejected_total", dimensions: [("kind", kind)]).increment()
                    rowsSetAside.add(1, ordering: .relaxed)
                    logger.error("postgres refused a row; set aside", metadata: [
                        "kind": .string(kind), "row": .string(describe(row)), "error": .string(error.description),
                    ])
                } catch {
                    outage = error
                    retry(row)
                }
            }
        }
        await alone(batch.users, kind: "user", describe: { "user \($0.id)" }, { user throws(StoreError) in try await store.upsertUsers([user]) },
            written: { written.users.append($0) }, retry: { retry.users.append($0) })
        await alone(batch.devices, kind: "device", describe: { "device \($0.userID)/\($0.deviceID)" },
            { device throws(StoreError) in try await store.upsertDevices([device]) },
            written: { written.devices.append($0) }, retry: { retry.devices.append($0) })
        await alone(batch.snapshots, kind: "snapshot", describe: { "snapshot of \($0.userID) v\($0.version)" },
            { snapshot throws(StoreError) in try await store.saveSnapshots([snapshot]) },
            written: { written.snapshots.append($0) }, retry: { retry.snapshots.append($0) })
        await alone(batch.plays, kind: "play", describe: { "play of \($0.userID) \($0.record.trackID)" },
            { play throws(StoreError) in try await store.insertPlays([play]) },
            written: { written.plays.append($0) }, retry: { retry.plays.append($0) })
        if let outage {
            failed(retry, error: outage, now: now)
        } else {
            succeeded(written, now: now)
        }
    }

    private func take(now: Int64, all: Bool) -> Batch {
        queues.withLock { queues in
            var batch = Batch()
            guard all || now >= queues.retryAt else { return batch }
            queues.lastWritten = queues.lastWritten.filter { now - $0.value < limits.snapshotIntervalMs }
            queues.snapshotsInFlight = [:]
            for (user, pending) in queues.snapshots where all || pending.dueAt <= now {
                guard batch.snapshots.count < limits.batchSize else { break }
                batch.snapshots.append(Self.encode(user: user, pending))
                queues.snapshotsInFlight[user] = pending
            }
            for snapshot in batch.snapshots {
                queues.snapshots[snapshot.userID] = nil
                // The next snapshot of this user waits for the interval, counted from this write.
                queues.lastWritten[snapshot.userID] = now
            }
            let playCount = min(limits.batchSize, queues.plays.count)
            batch.plays = Array(queues.plays.prefix(playCount))
            queues.plays.removeFirst(playCount)
            queues.playsInFlight = batch.plays
            batch.devices = Array(queues.devices.values.prefix(limits.batchSize))
            for device in batch.devices { queues.devices[device.userID + "\u{1F}" + device.deviceID] = nil }
            batch.users = Array(queues.users.values.prefix(limits.batchSize))
            for user in batch.users { queues.users[user.id] = nil }
            return batch
        }
    }

    private static func encode(user: String, _ pending: PendingSnapshot) -> PlaybackSnapshot {
        let json = String(decoding: PlaybackJSON.encode(pending.playback), as: UTF8.self)
        return PlaybackSnapshot(
            userID: user, epoch: pending.playback.epoch, version: pending.playback.version, stateJSON: json,
            takenAt: pending.takenAt)
    }

    private func succeeded(_ batch: Batch, now: Int64) {
        snapshotWrites.add(batch.snapshots.count, ordering: .relaxed)
        if !batch.snapshots.isEmpty, let handler = writtenHandler.withLock({ $0 }) { handler(batch.snapshots) }
        let recovered: StoreError? = queues.withLock { queues in
            queues.playsInFlight = []
            queues.snapshotsInFlight = [:]
            defer {
                queues.lastError = nil
                queues.backoffMs = 0
                queues.retryAt = 0
            }
            return queues.lastError
        }
        if let recovered { logger.notice("postgres writes resumed", metadata: ["after": .string(recovered.description)]) }
        for (kind, count) in [("snapshot", batch.snapshots.count), ("play", batch.plays.count), ("device", batch.devices.count)]
        where count > 0 {
            Counter(label: "playback_store_written_total", dimensions: [("kind", kind)]).increment(by: count)
        }
    }

    /// Puts the batch back (newer snapshots win) and backs off.
    private func failed(_ batch: Batch, error: StoreError, now: Int64) {
        requeue(batch, now: now)
        let first: Bool = queues.withLock { queues in
            let first = queues.lastError == nil
            queues.lastError = error
            queues.backoffMs = min(limits.maxBackoffMs, max(limits.tickMs * 2, queues.backoffMs * 2))
            queues.retryAt = now + queues.backoffMs
            return first
        }
        Counter(label: "playback_store_write_failures_total", dimensions: [("code", error.code.rawValue)]).increment()
        if first {
            logger.error("postgres writes failing; queueing", metadata: ["error": .string(error.description)])
        } else {
            logger.debug("postgres writes still failing", metadata: ["error": .string(error.description)])
        }
    }

    /// Puts an unwritten batch back in the queues (behind what was queued for the same rows since).
    private func requeue(_ batch: Batch, now: Int64) {
        queues.withLock { queues in
            for snapshot in batch.snapshots where queues.snapshots[snapshot.userID] == nil {
                if let playback = try? JSONDecoder().decode(Playback.self, from: Data(snapshot.stateJSON.utf8)) {
                    queues.snapshots[snapshot.userID] = PendingSnapshot(playback: playback, takenAt: snapshot.takenAt, dueAt: now)
                }
            }
            queues.playsInFlight = []
            queues.snapshotsInFlight = [:]
            queues.plays.insert(contentsOf: batch.plays, at: 0)
            while queues.plays.count > limits.maxPendingPlays { queues.plays.removeFirst() }
            for device in batch.devices where queues.devices[device.userID + "\u{1F}" + device.deviceID] == nil {
                queues.devices[device.userID + "\u{1F}" + device.deviceID] = device
            }
            for user in batch.users where queues.users[user.id] == nil { queues.users[user.id] = user }
        }
    }

    private func report() {
        let (snapshots, plays, devices) = pending
        let up = queues.withLock { $0.lastError == nil }
        Gauge(label: "playback_store_pending", dimensions: [("kind", "snapshot")]).record(snapshots)
        Gauge(label: "playback_store_pending", dimensions: [("kind", "play")]).record(plays)
        Gauge(label: "playback_store_pending", dimensions: [("kind", "device")]).record(devices)
        Gauge(label: "playback_store_up").record(up ? 1 : 0)
    }
}

/// One writer at a time, in arrival order.
actor WriteGate {
    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    func run(_ body: () async -> Void) async {
        if busy {
            await withCheckedContinuation { waiting.append($0) }
        } else {
            busy = true
        }
        defer { if waiting.isEmpty { busy = false } else { waiting.removeFirst().resume() } }
        await body()
    }
}
