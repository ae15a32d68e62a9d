import Foundation
import Logging
import Metrics
import NIOCore

/// Bringing back a user's playback the storage lost, or that went back in time: the newest state
/// any node holds wins, above every epoch and version handed out.
extension UserPlayback {
    /// Puts `newer` (from the snapshot of version `source`) in place of the restore `stored`, above
    /// it: a compare-and-set on the stored version, so a command committed meanwhile keeps its place.
    /// Another node may replace it first with a snapshot of its own: then this one goes in on top
    /// of that, if it is still the newer, for a few rounds.
    func replaceRestore(_ stored: Playback, with newer: Playback, source: Int64) async throws -> Playback {
        var stored = stored
        for _ in 0..<4 {
            var replacement = newer
            replacement.epoch = max(newer.epoch, stored.epoch + 1)
            replacement.version = max(newer.version, stored.version + 1)
            // The replacement settles when the restore it replaces would have: replacing never extends it.
            replacement.restoredFrom = .init(source: source, at: replacement.version, settlesAt: stored.restoredFrom?.settlesAt ?? 0)
            let replaced = try await storage.restore(
                user: userID, playback: replacement, holder: replacement.activeDevice == nil ? nil : LeaseHolder.value(of: replacement),
                ttlMs: timing.leaseTTLMs, frame: Self.restoredFrame(replacement), replacing: stored.version)
            if replaced {
                Counter(label: "playback_restores_total", dimensions: [("from", "newer_snapshot")]).increment()
                logger.notice("an older restore replaced by a newer snapshot held here", metadata: [
                    "restored.source": .stringConvertible(stored.restoredFrom?.source ?? -1), "snapshot.version": .stringConvertible(source),
                    "restored.version": .stringConvertible(replacement.version),
                ])
                environment.durability.writer?.snapshot(user: userID, playback: replacement, urgent: true)
                return replacement
            }
            guard let current = try await storage.loadPlayback(user: userID) else { return stored }
            guard current.isRestore(olderThan: source) else { return current }
            stored = current
        }
        return stored
    }

    /// The bus frame that tells the user's devices about a restored playback.
    static func restoredFrame(_ playback: Playback) -> BusMessage {
        let lease = playback.activeDevice.map { LeaseChange(epoch: playback.epoch, revoked: nil, granted: $0, reason: .transferred) }
        return BusMessage(event: PlaybackEvent(
            state: playback.playerState(includeQueue: true), queueChanged: true, lease: lease,
            cause: .init(op: "restored", device: nil, request: nil)).prepared)
    }

    /// The storage has no state for the user: a new user, or it lost it (a Redis restart without
    /// persistence, a flush, eviction; a new process of the memory engine); or, with `replacing`,
    /// it holds an older state than this node saw. Puts back the newest of the PostgreSQL
    /// snapshot and the stored state, with an epoch and version raised above everything seen
    /// (see `Durability.restore`), tells the user's devices, and reads again.
    func restorePlayback(replacing stale: Playback? = nil) async throws -> Playback {
        if let stale {
            // A read answered before a commit whose frame came first looks the same: read again.
            if let again = try await storage.loadPlayback(user: userID), (again.epoch, again.version) != (stale.epoch, stale.version) {
                return again
            }
            Counter(label: "playback_storage_regressions_total").increment()
            logger.warning("stored playback older than seen here; restoring above", metadata: [
                "stored.epoch": .stringConvertible(stale.epoch), "stored.version": .stringConvertible(stale.version),
            ])
        }
        try await registerLocalDevices()
        let known = fanout?.lastKnown.map { (playback: $0.playback, takenAt: $0.at) }
        let (found, quietMs) = await environment.durability.restoreAged(user: userID, clock: environment.clock, alsoKnown: known)
        // Read after PostgreSQL answered (or timed out): the jump, the floors and the settling count from now.
        let now = self.now
        let mark = highWater(now: now)
        if case .unreachable = found, stale == nil, mark == nil {
            Counter(label: "playback_restores_total", dimensions: [("from", "clock")]).increment()
        }
        let restored: Playback
        let frame: BusMessage?
        // A user idle longer than the idle TTL left Redis on purpose, once PostgreSQL held that very
        // state: no daemon can hold a newer one, so changes need not wait for one.
        let idleReturn = configuration.idleTTLMs > 0 && stale == nil && (quietMs ?? 0) >= configuration.idleTTLMs
        let settleMs = idleReturn ? 0 : configuration.restoreSettleMs
        switch RestoreFloor.choose(found, stale: stale, mark: mark, now: now, settleMs: settleMs) {
        case .wait(let error):
            throw error
        case .put(let playback, let announce):
            restored = playback
            frame = announce ? Self.restoredFrame(playback) : nil
        }
        let won = try await storage.restore(
            user: userID, playback: restored, holder: restored.activeDevice == nil ? nil : LeaseHolder.value(of: restored),
            ttlMs: timing.leaseTTLMs, frame: frame, replacing: stale?.version)
        guard var playback = try await storage.loadPlayback(user: userID) else {
            throw PlaybackError(.internal, "playback of \(userID) vanished right after it was restored")
        }
        // Another node restored first, from an older snapshot than this one: the newer one wins.
        if !won, let source = restored.restoredFrom?.source, restored.version > 0, playback.isRestore(olderThan: source) {
            playback = try await replaceRestore(playback, with: restored, source: source)
        }
        // The snapshot is of what the storage holds now: another node may have restored first, and
        // a restore that lost must not leave its own (never used) state in PostgreSQL.
        if playback.version > 0 { environment.durability.writer?.snapshot(user: userID, playback: playback, urgent: true) }
        return playback
    }
}
