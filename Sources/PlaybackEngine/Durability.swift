import DequeModule
import Foundation
import Logging
import Metrics
import PlaybackStore
import Synchronization

/// What the engines keep beyond their own memory or Redis: snapshots of each user's playback
/// (written behind), play history, devices and users, and the users' countries for licensing.
///
/// With PostgreSQL configured all of it goes to a `PlaybackStore` through a `WriteBehind`; without,
/// the last plays are kept per user in this process (so `recently-played` still answers) and
/// nothing survives a restart.
public final class Durability: Sendable {
    public let writer: WriteBehind?
    let clock: @Sendable () -> Int64
    let logger: Logger
    private let localPlays = Mutex<[String: Deque<PlayedRecord>]>([:])

    /// A user's country from the users table, and until when it is good (the user keeps it).
    struct CachedCountry: Sendable {
        var country: String?
        var expiresAt: Int64
    }

    struct PlayedRecord {
        var record: PlayRecord
        var deviceKind: String?
    }

    /// How long a user's country from the users table is cached (failed lookups: a tenth of it).
    static let countryTTLMs: Int64 = 300_000

    public init(writer: WriteBehind?, logger: Logger, clock: @escaping @Sendable () -> Int64 = ServerClock.nowMs) {
        self.writer = writer
        self.logger = logger
        self.clock = clock
    }

    /// Memory only: nothing outlives the process.
    public static func none(logger: Logger = Logger(label: "playback.durability")) -> Durability {
        Durability(writer: nil, logger: logger)
    }

    var store: PlaybackStore? { writer?.store }

    // MARK: Recording

    /// A change was committed: snapshot it (urgent when the lease moved) and record finished plays.
    func committed(user: String, transition: Transition, deviceKind: (String) -> String?) {
        if let writer {
            writer.snapshot(user: user, playback: transition.playback, urgent: transition.lease != nil)
            for record in transition.finishedPlays {
                writer.play(HistoryRow(userID: user, record: record, deviceKind: record.device.flatMap(deviceKind)))
            }
        } else if !transition.finishedPlays.isEmpty {
            localPlays.withLock { all in
                var plays = all[user] ?? []
                for record in transition.finishedPlays {
                    plays.append(PlayedRecord(record: record, deviceKind: record.device.flatMap(deviceKind)))
                    if plays.count > PlayedItem.maxLimit { plays.removeFirst() }
                }
                all[user] = plays
            }
        }
        if !transition.finishedPlays.isEmpty {
            Counter(label: "playback_plays_recorded_total").increment(by: transition.finishedPlays.count)
        }
    }

    /// A device connected or disconnected; also records the user with their token's claims.
    func sawDevice(user: UserIdentity, device: ClientMessage.Hello.Device, at now: Int64) {
        writer?.user(StoredUser(id: user.userID, country: user.country, tier: user.tier))
        deviceSeen(user: user.userID, id: device.id, name: device.name, kind: device.kind, at: now)
    }

    /// A device was seen (its `last_seen` moves forward).
    func deviceSeen(user: String, id: String, name: String, kind: DeviceKind, at now: Int64) {
        writer?.device(StoredDeviceRow(userID: user, deviceID: id, name: name, kind: kind.rawValue, lastSeen: now))
    }

    /// PostgreSQL's condition for `/readyz`: "up", or down with what is queued.
    var check: [String: String] {
        guard let writer else { return [:] }
        guard let error = writer.lastError else { return ["postgres": "up"] }
        let pending = writer.pending
        return ["postgres": "down (\(error.code.rawValue)); queued: \(pending.snapshots) snapshots, \(pending.plays) plays"]
    }

    // MARK: Reading

    /// Whether a user whose token carries no country has one in the users table to look up.
    var looksUpCountries: Bool { store != nil }

    /// The user's country from the users table (unknown when the lookup fails, for a tenth as long).
    func lookUpCountry(of user: String) async -> CachedCountry {
        let now = clock()
        guard let store else { return CachedCountry(country: nil, expiresAt: .max) }
        do {
            let country = try await store.user(id: user)?.country
            return CachedCountry(country: country, expiresAt: now + Self.countryTTLMs)
        } catch {
            logger.debug("country lookup failed", metadata: ["user.id": .string(user), "error": .string(error.description)])
            return CachedCountry(country: nil, expiresAt: now + Self.countryTTLMs / 10)
        }
    }

    /// The user's latest plays, newest first.
    func recentPlays(user: String, limit: Int, catalog: any TrackCatalog) async throws(PlaybackError) -> [PlayedItem] {
        let rows: [(PlayRecord, String?)]
        if let writer, let store {
            do {
                // Plays still queued for PostgreSQL come first (they are the newest); one being
                // written may also be read back already, so duplicates are dropped.
                let unwritten = writer.unwrittenPlays(user: user).reversed().map { ($0.record, $0.deviceKind) }
                let stored = try await store.recentPlays(user: user, limit: limit).map { ($0.record, $0.deviceKind) }
                var seen = Set<PlayKey>()
                rows = (unwritten + stored).filter { seen.insert(PlayKey($0.0)).inserted }.prefix(limit).map { $0 }
            } catch {
                logger.warning("play history unavailable", metadata: ["user.id": .string(user), "error": .string(error.description)])
                throw PlaybackError(.unavailable, "play history is unavailable; try again")
            }
        } else {
            rows = localPlays.withLock { all in (all[user] ?? []).reversed().prefix(limit).map { ($0.record, $0.deviceKind) } }
        }
        return rows.compactMap { record, kind in
            catalog.track(id: record.trackID).map { PlayedItem(track: $0, record: record, deviceKind: kind) }
        }
    }

    /// What tells two records of the same play apart from different plays.
    struct PlayKey: Hashable {
        var track: String
        var playedAt: Int64
        var endedAt: Int64
        var device: String?

        init(_ record: PlayRecord) {
            track = record.trackID
            playedAt = record.playedAt
            endedAt = record.endedAt
            device = record.device
        }
    }

    // MARK: Recovery

    /// How a user's playback starts when it is in neither memory nor Redis.
    enum Restored {
        /// No snapshot: a user who never played.
        case fresh
        /// From a snapshot, with epoch and version raised above anything handed out since it was taken.
        case snapshot(Playback)
        /// No snapshot to go by: an empty playback whose epoch and version start above anything before.
        case unknown(Playback)
        /// PostgreSQL could not say (unreachable, or its snapshot unreadable) and nothing is queued
        /// here: the same empty playback, for a user this node knows nothing of.
        case unreachable(Playback)
    }

    /// Reads the user's snapshot, the newer of the one still queued here and PostgreSQL's (another
    /// node may have written a newer one than this node queued), and resumes from it.
    ///
    /// Changes made after the snapshot was taken (at most about a second of them, more while
    /// PostgreSQL was down) are lost with Redis, and their epochs and versions were seen by devices;
    /// so the resumed ones jump by the time since the snapshot in ms plus a margin: above every
    /// value handed out meanwhile as long as a user makes fewer than 1,000 changes per second.
    func restore(user: String, now: Int64) async -> Restored {
        await restore(user: user, clock: { now }, alsoKnown: nil)
    }

    /// As `restore(user:now:)`, reading the time once PostgreSQL answered: a slow answer (a
    /// timeout while it is down) must not shrink the jump above what was handed out meanwhile.
    /// `alsoKnown`: the newest state this node saw of the user (its cache before the loss), which
    /// wins when it is newer than any snapshot.
    func restore(user: String, clock: () -> Int64, alsoKnown: (playback: Playback, takenAt: Int64)?) async -> Restored {
        await restoreAged(user: user, clock: clock, alsoKnown: alsoKnown).found
    }

    /// As `restore`, with how long nothing had changed when the snapshot it came from was read
    /// (nil when it did not come from one).
    func restoreAged(user: String, clock: () -> Int64, alsoKnown: (playback: Playback, takenAt: Int64)?) async
        -> (found: Restored, quietMs: Int64?)
    {
        let base: (playback: Playback, takenAt: Int64)?
        do {
            base = try await newestSnapshot(user: user, alsoKnown: alsoKnown)
        } catch let error as StoreError {
            let now = clock()
            logger.error("no state in memory or Redis and PostgreSQL unreachable",
                metadata: ["user.id": .string(user), "error": .string(error.description)])
            var empty = Playback.initial
            empty.epoch = now
            empty.version = now
            return (.unreachable(empty), nil)
        } catch {
            let now = clock()
            logger.error("no state in memory or Redis and an unreadable snapshot", metadata: ["user.id": .string(user), "error": .string("\(error)")])
            var empty = Playback.initial
            empty.epoch = now
            empty.version = now
            return (.unreachable(empty), nil)
        }
        guard let (playback, takenAt) = base else { return (.fresh, nil) }
        let now = clock()
        var resumed = Self.resume(playback, takenAt: takenAt, now: now)
        if alsoKnown == nil {
            // No daemon here saw the user since the snapshot (a restart, not a Redis loss under a
            // running daemon): its holder is gone with that daemon, and no time ran since.
            resumed = resumed.pausedAtLoss(lostAt: takenAt, now: now)
        }
        resumed.restoredFrom = .init(source: playback.contentVersion, at: resumed.version)
        Counter(label: "playback_restores_total", dimensions: [("from", "snapshot")]).increment()
        logger.notice("playback restored from snapshot", metadata: [
            "user.id": .string(user), "snapshot.version": .stringConvertible(playback.version),
            "restored.epoch": .stringConvertible(resumed.epoch), "restored.version": .stringConvertible(resumed.version),
        ])
        return (.snapshot(resumed), max(0, now - takenAt))
    }

    /// Whether PostgreSQL holds the user's playback at `version` or later, with nothing newer queued here.
    func isDurable(user: String, version: Int64) async -> Bool {
        guard let writer, writer.pendingSnapshot(user: user) == nil else { return false }
        guard let stored = try? await writer.store.loadSnapshot(user: user) else { return false }
        return stored.version >= version
    }

    /// The newest snapshot this node can find for `user`: the one still queued here or PostgreSQL's,
    /// whichever holds the newer content (another node may have written a newer one than this node
    /// queued, or this node may have written its own since a restore read PostgreSQL). nil when there is none;
    /// throws only when PostgreSQL cannot say and nothing is queued here.
    func newestSnapshot(user: String, alsoKnown: (playback: Playback, takenAt: Int64)? = nil) async throws
        -> (playback: Playback, takenAt: Int64)?
    {
        guard let writer else { return alsoKnown }
        // Its age counts like a stored one's: other nodes may have handed out versions since.
        let queued = writer.pendingSnapshot(user: user).map { (playback: $0.playback, takenAt: $0.takenAt) }
        let pending = [queued, alsoKnown].compactMap { $0 }.max { $0.playback.contentVersion < $1.playback.contentVersion }
        // PostgreSQL known to be failing: what is queued here is newer than anything it holds from
        // this node, and waiting for its timeout would only make this node late to offer it.
        if let pending, !writer.isHealthy { return pending }
        var stored: (playback: Playback, takenAt: Int64)?
        do {
            if let snapshot = try await writer.store.loadSnapshot(user: user) {
                stored = (try JSONDecoder().decode(Playback.self, from: Data(snapshot.stateJSON.utf8)), snapshot.takenAt)
            }
        } catch {
            guard pending != nil else { throw error }
            logger.warning("PostgreSQL's snapshot unreadable; using the one queued here", metadata: [
                "user.id": .string(user), "error": .string("\(error)"),
            ])
        }
        // By the version of what they hold: PostgreSQL may have a restore of an older snapshot
        // (queued by the node that restored it), raised above this node's pre-loss one.
        return [pending, stored].compactMap { $0 }.max { $0.playback.contentVersion < $1.playback.contentVersion }
    }

    /// Margin added to every resume, for clock differences between nodes.
    static let resumeMargin: Int64 = 1_000

    static func resume(_ playback: Playback, takenAt: Int64, now: Int64) -> Playback {
        var resumed = playback
        let jump = resumeMargin + max(0, now - takenAt)
        resumed.epoch += jump
        resumed.version += jump
        return resumed
    }
}
