import NIOCore
import Synchronization

/// The storage of the embedded engine: every user's playback, lease, devices and remembered
/// answers in this process, behind one lock per user; the bus is a direct call. It keeps the same
/// rules as the Redis scripts (`RedisScripts`), so both engines behave alike.
public final class MemoryStorage: PlaybackStorage {
    private struct Record {
        var playback: Playback?
        var lease: (holder: String, until: Int64)?
        var devices: [String: StoredDevice] = [:]
        var online: [String: Int64] = [:]
        var requests: RequestLog

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

    public func start(onFrame: @escaping @Sendable (String, BusMessage) -> Void, onResubscribed: @escaping @Sendable () -> Void) async {
        bus.current = BusHandlers(frame: onFrame, resubscribed: onResubscribed)
    }

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
            if let id = call.requestID, let known = record.requests.answer(for: id, now: now) { return (.known(known), nil) }
            guard (record.playback?.version ?? 0) == call.expectedVersion else { return (.conflict(record.playback, json: nil), nil) }
            if let id = call.requestID { record.requests.record(call.answer, for: id, now: now) }
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

    public func join(user: String, device: String, entry: StoredDevice, presenceUntil: Int64, frame: BusMessage) async throws {
        withRecord(user) { record, _ in
            record.devices[device] = entry
            record.online[device] = presenceUntil
            return ((), frame)
        }
    }

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

    public func refreshPresence(user: String, devices: [String], now: Int64, until: Int64) async throws -> (missing: Int, online: Set<String>) {
        withRecord(user) { record, _ in
            var missing = 0
            for device in devices {
                if record.online.updateValue(until, forKey: device) == nil { missing += 1 }
            }
            return ((missing, Set(record.online.filter { $0.value > now }.keys)), nil)
        }
    }

    public func takeLease(user: String, holder: String, ttlMs: Int64) async throws {
        withRecord(user) { record, now in
            record.lease = (holder, now + ttlMs)
            return ((), nil)
        }
    }

    public func renewLease(user: String, holder: String, ttlMs: Int64) async throws -> Bool {
        withRecord(user) { record, now in
            guard record.holder(at: now) == holder else { return (false, nil) }
            record.lease = (holder, now + ttlMs)
            return (true, nil)
        }
    }

    public func retakeLease(user: String, holder: String, ttlMs: Int64) async throws {
        withRecord(user) { record, now in
            if record.holder(at: now) == nil { record.lease = (holder, now + ttlMs) }
            return ((), nil)
        }
    }

    public func leaseExists(user: String) async throws -> Bool {
        withRecord(user) { record, now in (record.holder(at: now) != nil, nil) }
    }

    public func restore(user: String, playback: Playback, holder: String?, ttlMs: Int64, frame: BusMessage?) async throws -> Bool {
        withRecord(user) { record, now in
            guard record.playback == nil else { return (false, nil) }
            record.playback = playback
            if let holder { record.lease = (holder, now + ttlMs) }
            return (true, frame)
        }
    }

    public func readiness() async -> (ready: Bool, checks: [String: String]) { (true, [:]) }

    public func shutdown() async {}
}
