import Foundation
import Logging
import Metrics
import NIOCore

/// A user's upkeep on this node: the lease's renewal and expiry, presence, the recovery after the
/// bus was down, and the grants a holder missed.
extension UserPlayback {
    // MARK: Upkeep

    /// Renews the lease of a local holder, refreshes presence, and expires a lease whose lock is
    /// gone (its node died, or its device did not come back within the grace period).
    ///
    /// Outside the user's gate: the renewal is a compare-and-set in the storage and presence is the
    /// storage's, so commands never wait behind the upkeep's round trips (they did: with thousands
    /// of users, one command in ten waited hundreds of ms). Only an expiry takes the gate, as a
    /// command does, and the reducer turns it down if the lease moved meanwhile.
    ///
    /// False when no device of the user is here (nothing to keep up).
    @discardableResult
    func maintain() async -> Bool {
        guard let fanout else { return false }
        do {
            let now = self.now
            let connected = fanout.connectedSessions
            let refresh = try await presence.refreshIfDue(connected, now: now)
            let cachedOnline = refresh == nil ? nil : fanout.cached().map { Set($0.directory.records.filter(\.value.online).keys) }
            switch UpkeepPlan.directory(after: refresh, cachedOnline: cachedOnline) {
            case .register:
                try await registerLocalDevices()
                fanout.forgetCache(at: now)
                _ = try await cachedOrLoaded(fanout)
            case .reload:
                let mark = fanout.directoryMark
                fanout.remember(directory: try await loadDirectory(), readAt: mark)
            case .keep:
                break
            }
            if refresh != nil, case let rtts = fanout.roundTrips, !rtts.isEmpty {
                // With the presence refresh: the directory's round trips (`rtt_ms` in device lists).
                let sessions = Dictionary(connected.map { ($0.device, $0.session) }, uniquingKeysWith: { $1 })
                let written = try await presence.writeRoundTrips(rtts, sessions: sessions, now: now)
                if !written.isEmpty { fanout.remember(roundTrips: written) }
            }
            let playback: Playback
            if let cached = fanout.cachedPlayback ?? fanout.cached()?.playback {
                playback = cached
            } else {
                playback = try await loadPlayback()
                fanout.remember(playback)
            }
            let duties = UpkeepPlan.duties(for: playback, holderHere: playback.activeDevice.map(fanout.hasDevice) ?? false, now: now)
            if duties.checkConfirmation { submitConfirmDeadline(epoch: playback.epoch) }
            if duties.renew { try await lease.renew(playback, now: now) }
        } catch {
            logger.debug("lease upkeep failed", metadata: ["error": .string("\(error)")])
        }
        return true
    }

    /// The storage's deadlines say this user's lease lapsed (its holder's node may be dead, and no
    /// device of the user may be here): under the gate, on the stored state read afresh, expires it
    /// if it is still gone (its device may have come back meanwhile, which takes the lease under
    /// the gate), then settles the deadline. A holder still connected to a live node only missed
    /// its renewals (a starved process): this node takes the lease back if the holder is here,
    /// else leaves it to the holder's node for a tick.
    func sweep() async {
        do {
            try await gate.run {
                let playback = try await loadPlayback()
                fanout?.remember(playback)
                let lostAt = playback.activeDevice == nil ? nil : try await lease.lapse(of: playback, now: now)
                let holderHere = playback.activeDevice.map { fanout?.hasDevice($0) == true } ?? false
                let sweep = try await UpkeepPlan.sweep(holder: playback.activeDevice, lostAt: lostAt, holderHere: holderHere) {
                    try await storage.liveNode(of: playback.activeDevice ?? "", user: userID) != nil
                }
                switch sweep {
                case .settle:
                    break
                case .takeBack:
                    try await lease.take(for: playback, now: now)
                case .deferToHolder:
                    try await storage.deferLeaseSweep(user: userID, ms: timing.tickMs)
                    return
                case .expire(let device, let lostAt):
                    logger.info("lease expired", metadata: [
                        "device.id": .string(device), "lease.epoch": .stringConvertible(playback.epoch),
                        "lease.lost_ms_ago": .stringConvertible(now - lostAt),
                    ])
                    _ = await apply(
                        Submission(user: UserIdentity(userID: userID), input: .expire(device: device, lostAt: lostAt), device: nil),
                        cause: .init(op: "expired", device: device, request: nil))
                }
                try await lease.settleDeadline()
            }
        } catch {
            logger.debug("lease sweep failed", metadata: ["error": .string("\(error)")])
        }
    }

    /// After a bus outage: send the current state to local devices if they may have missed it.
    /// The storage may still be reconnecting, so it tries for a while, without holding the
    /// user's gate between attempts.
    func recover() async {
        for attempt in 0..<20 {
            if await gate.run({ await recoverNow() }) { return }
            try? await Task.sleep(for: .milliseconds(100 * min(attempt + 1, 5)))
        }
    }

    /// False when the state could not be read.
    func recoverNow() async -> Bool {
        guard let fanout else { return true }
        fanout.forgetCache(at: now)
        guard let (playback, _) = try? await cachedOrLoaded(fanout) else { return false }
        logger.debug("recovered after the bus was down", metadata: ["playback.version": .stringConvertible(playback.version)])
        guard playback.version > fanout.latestVersion else { return true }
        // The active device may have missed its grant too (a restored playback has a new epoch); a
        // revoke that was missed is sent by the fan-out, which knows which local device it told.
        let lease = playback.activeDevice.flatMap { active in
            fanout.needsGrant(active, epoch: playback.epoch)
                ? LeaseChange(epoch: playback.epoch, revoked: nil, granted: active, reason: .transferred) : nil
        }
        fanout.receive(BusMessage(event: PlaybackEvent(
            state: playback.playerState(includeQueue: true), queueChanged: true, lease: lease,
            cause: .init(op: "recovered", device: nil, request: nil)).prepared))
        return true
    }

    /// Tells a local device that holds the lease its current epoch, with the full state (its
    /// grant was lost while the bus was down).
    func regrant(_ device: String) async {
        await gate.run {
            guard let fanout, let playback = try? await loadPlayback(), playback.activeDevice == device else { return }
            fanout.remember(playback)
            fanout.grant(
                EncodedMessage(.leaseGranted(.init(epoch: playback.epoch, state: playback.playerState(includeQueue: true)))), to: device,
                epoch: playback.epoch)
        }
    }

    /// Writes this node's connected devices of the user into the directory again (after the storage lost it).
    func registerLocalDevices() async throws {
        guard let fanout else { return }
        let sessions = fanout.connectedSessions
        try await presence.register(sessions, now: now)
    }

    /// Queues the current state for PostgreSQL now (shutdown).
    func writeSnapshot() async {
        guard let writer = environment.durability.writer else { return }
        var playback = fanout?.cached()?.playback
        if playback == nil { playback = try? await loadPlayback() }
        guard let playback, playback.version > 0 else { return }
        writer.snapshot(user: userID, playback: playback, urgent: true)
    }
}
