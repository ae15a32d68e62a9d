import NIOCore
import Synchronization

/// The storage of the embedded engine: every user's playback, lease, devices and remembered
/// answers in this process, behind one lock per user; the bus is a direct call. It keeps the same
/// rules as the Redis scripts (`RedisScripts`), so both engines behave alike.
public final class MemoryStorage: PlaybackStorage {
    public var system: String { "memory" }
    private struct Record {
        var playback: Playback?
        var lease: (holder: String, until: Int64)?
        /// When the lease's holder was last known connected, at its epoch.
        var seen: (epoch: Int64, at: Int64)?
        /// Until when a sweep claimed the lapsed lease.
        var sweepClaimedUntil: Int64 = 0
        var devices: [String: StoredDevice] = [:]
        var online: [String: Int64] = [:]
        var requests: RequestLog
        /// The command that has the user's turn, and until when (`CommandCall.turn`).
        var turn: (token: String, until: Int64)?

        func holder(at now: Int64) -> String? {
            guard let lease, lease.until > now else { return nil }
            return lease.holder
        }
    }

    private final class Slot: Sendable {
        let record: Mutex<Record>
        init(_ record: Record) { self.record = Mutex(record) }
    }

    private let slots = Mutex<[String: Slot]>([:])
    private let bus = BusHandlers.Slot()
    private let clock: @Sendable () -> Int64
    private let requestWindowMs: Int64
    private let requestCapacity: Int

    init(configuration: EngineConfiguration, clock: @escaping @Sendable () -> Int64) {
        self.clock = clock
        self.requestWindowMs = configuration.idempotencyWindowMs
        self.requestCapacity = configuration.idempotencyCapacity
    }

    /// Runs `body` on the user's record (created empty on first use) under its lock, then puts
    /// `frame` (what `body` returned to publish) on the bus, outside the lock.
    private func withRecord<T>(_ user: String, _ body: (inout Record, Int64) throws -> (T, BusMessage?)) rethrows -> T {
        let slot = slots.withLock { slots in
            if let slot = slots[user] { return slot }
            let slot = Slot(Record(requests: RequestLog(windowMs: requestWindowMs, capacity: requestCapacity)))
            slots[user] = slot
            return slot
        }
        let now = clock()
        let (value, frame) = try slot.record.withLock { try body(&$0, now) }
        if let frame { publish(user, frame) }
        return value
    }

    private func publish(_ user: String, _ frame: BusMessage) {
        bus.current?.frame(user, frame)
    }

    public var busLagMs: Int64 { 0 }

    public func attach(onFrame: @escaping @Sendable (String, BusMessage) -> Void, onResubscribed: @escaping @Sendable (_ users: [String]?) -> Void) {
        bus.current = BusHandlers(frame: onFrame, resubscribed: onResubscribed)
    }

    /// The bus is a direct call: nothing to keep.
    public func run() async {}

    public func waitUntilReady(timeout: Duration) async -> Bool { true }

    public func subscribe(user: String) async throws {}
    public func unsubscribe(user: String) async {}

    public func loadPlayback(user: String) async throws -> Playback? {
        withRecord(user) { record, _ in (record.playback, nil) }
    }

    public func loadDirectory(user: String, now: Int64, retentionMs: Int64) async throws -> DeviceDirectory {
        withRecord(user) { record, _ in
            (DeviceDirectory(entries: record.devices, presence: record.online, now: now, retentionMs: retentionMs), nil)
        }
    }

    public func command(user: String, _ call: CommandCall, completion: @escaping @Sendable (Result<CommandReply, any Error>) -> Void) {
        let reply = withRecord(user) { record, now -> (CommandReply, BusMessage?) in
            if let id = call.requestID {
                if let known = record.requests.answer(for: id, now: now) { return (.known(known), nil) }
                if let wait = record.requests.fullFor(now: now, capacity: call.answerCapacity) { return (.full(retryAfterMs: wait), nil) }
            }
            if let turn = record.turn, turn.until > now, turn.token != call.turn?.token { return (.turnHeld(forMs: turn.until - now), nil) }
            if let asked = call.turn, record.turn.map({ $0.until <= now }) ?? true { record.turn = (asked.token, now + asked.ttlMs) }
            guard (record.playback?.version ?? 0) == call.expectedVersion else { return (.conflict(record.playback, json: nil), nil) }
            if call.turn != nil { record.turn = nil }
            if let id = call.requestID { record.requests.record(call.answer, for: id, now: now, windowMs: call.answerTTLMs) }
            guard let change = call.change else { return (.done, nil) }
            record.playback = change.playback
            switch change.lease {
            case .keep: break
            case .set(let holder, let ttlMs): record.lease = (holder, now + ttlMs)
            case .clear: record.lease = nil
            }
            var frame = change.frame
            frame.stored = change.json
            return (.done, frame)
        }
        completion(.success(reply))
    }

    public func join(user: String, device: String, entry: StoredDevice, presenceUntil: Int64, cap: Int, frame: BusMessage) async throws -> Bool {
        withRecord(user) { record, _ in
            let now = entry.lastSeen
            if (record.online[device] ?? 0) <= now, record.online.values.filter({ $0 > now }).count >= cap { return (false, nil) }
            record.devices[device] = entry
            record.online[device] = presenceUntil
            let excess = record.devices.count - cap
            if excess > 0 {
                let offline = record.devices.filter { (record.online[$0.key] ?? 0) <= entry.lastSeen }.sorted { $0.value.lastSeen < $1.value.lastSeen }
                for (gone, _) in offline.prefix(excess) {
                    record.devices[gone] = nil
                    record.online[gone] = nil
                }
            }
            return (true, frame)
        }
    }

    /// The memory engine keeps everything in this process: nothing leaves it when idle.
    public func expireIfIdle(user: String, version: Int64, ttlMs: Int64) async throws -> Bool { false }

    public func leave(user: String, device: String, session: String, entry: StoredDevice, frame: BusMessage) async throws -> Bool {
        withRecord(user) { record, _ in
            guard record.devices[device]?.session == session else { return (false, nil) }
            record.devices[device] = entry
            record.online[device] = nil
            return (true, frame)
        }
    }

    public func register(user: String, entries: [(device: String, entry: StoredDevice)], presenceUntil: Int64) async throws {
        withRecord(user) { record, _ in
            for (device, entry) in entries {
                record.devices[device] = entry
                record.online[device] = presenceUntil
            }
            return ((), nil)
        }
    }

    public func rewrite(user: String, entries: [(device: String, session: String, entry: StoredDevice)]) async throws {
        withRecord(user) { record, _ in
            for (device, session, entry) in entries where record.devices[device]?.session == session {
                record.devices[device] = entry
            }
            return ((), nil)
        }
    }

    public func refreshPresence(
        user: String, devices: [(device: String, session: String)], now: Int64, until: Int64
    ) async throws -> (missing: Int, online: Set<String>) {
        withRecord(user) { record, _ in
            var missing = 0
            for (device, session) in devices {
                guard let entry = record.devices[device] else {
                    missing += 1
                    continue
                }
                // A device that left meanwhile stays offline.
                if entry.session == session { record.online[device] = until }
            }
            return ((missing, Set(record.online.filter { $0.value > now }.keys)), nil)
        }
    }

    public func takeLease(user: String, holder: String, epoch: Int64, ttlMs: Int64, seen: Int64) async throws -> Bool {
        withRecord(user) { record, now in
            guard let playback = record.playback, playback.epoch == epoch else { return (false, nil) }
            if let current = record.holder(at: now), current != holder,
                current.split(separator: "|").last.flatMap({ Int64($0) }).map({ $0 >= epoch }) ?? true
            {
                return (false, nil)
            }
            record.lease = (holder, now + ttlMs)
            record.seen = (epoch, seen)
            return (true, nil)
        }
    }

    public func renewLease(user: String, holder: String, epoch: Int64, ttlMs: Int64, seen: Int64) async throws -> Bool {
        withRecord(user) { record, now in
            guard record.holder(at: now) == holder else { return (false, nil) }
            record.lease = (holder, now + ttlMs)
            record.seen = (epoch, seen)
            return (true, nil)
        }
    }

    public func leaseLapse(user: String, epoch: Int64) async throws -> LeaseLapse {
        withRecord(user) { record, now in
            if record.holder(at: now) != nil { return (.held, nil) }
            return (.lapsed(seen: record.seen.flatMap { $0.epoch == epoch ? $0.at : nil }), nil)
        }
    }

    public func lapsedLeases(limit: Int, claimMs: Int64, marginMs: Int64) async throws -> [String] {
        let now = clock()
        var due: [String] = []
        for (user, slot) in slots.withLock({ $0 }) where due.count < limit {
            let claimed = slot.record.withLock { record -> Bool in
                guard let lease = record.lease, lease.until + marginMs <= now, record.sweepClaimedUntil <= now else { return false }
                record.sweepClaimedUntil = now + claimMs
                return true
            }
            if claimed { due.append(user) }
        }
        return due
    }

    public func deferLeaseSweep(user: String, ms: Int64) async throws {
        withRecord(user) { record, now in
            record.sweepClaimedUntil = now + ms
            return ((), nil)
        }
    }

    /// One process: the only node is this one, always alive.
    public func markAlive(node: String, ttlMs: Int64) async throws {}

    public func liveNode(of device: String, user: String) async throws -> String? {
        withRecord(user) { record, now in
            (record.devices[device]?.session != nil && (record.online[device] ?? 0) > now ? "memory" : nil, nil)
        }
    }

    public func settleLeaseDeadline(user: String) async throws {
        withRecord(user) { record, now in
            if record.holder(at: now) == nil { record.lease = nil }
            return ((), nil)
        }
    }

    public func restore(
        user: String, playback: Playback, holder: String?, ttlMs: Int64, frame: BusMessage?, replacing: Int64?
    ) async throws -> Bool {
        withRecord(user) { record, now in
            guard record.playback?.version == replacing else { return (false, nil) }
            record.playback = playback
            if let holder {
                record.lease = (holder, now + ttlMs)
            } else if replacing != nil {
                record.lease = nil
            }
            return (true, frame)
        }
    }

    /// One node: its own limiter is the user's.
    public func takeRequestToken(user: String, rate: Int, burst: Int) async throws -> Int64? { nil }

    public func readiness() async -> (ready: Bool, checks: [String: String]) { (true, [:]) }

    public func shutdown() async {}
}
