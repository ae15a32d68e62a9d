import Foundation
import Logging
import Metrics
import NIOCore

/// A user's commands: the reducer on the cached state, one storage call, the conflict policy,
/// what a commit does on this node, and the two-phase transfer's deadline.
extension UserPlayback {
    // MARK: Commands

    /// Applies a submission and calls `completion` with the answer, after the commit (the change
    /// reaches the devices through the bus).
    func submit(_ submission: Submission, completion: @escaping @Sendable (Result<Receipt, PlaybackError>) -> Void) {
        let cause = ServerMessage.Cause(op: submission.input.causeOp, device: submission.device, request: submission.requestID)
        gate.enqueue { [self] done in
            attempt(submission, cause: cause, number: 0) { result in
                completion(result)
                done()
            }
        }
    }

    /// Applies an input while holding the gate (disconnects, upkeep).
    func apply(_ submission: Submission, cause: ServerMessage.Cause) async -> Result<Receipt, PlaybackError> {
        await withCheckedContinuation { continuation in
            attempt(submission, cause: cause, number: 0) { continuation.resume(returning: $0) }
        }
    }

    typealias Finish = @Sendable (Result<Receipt, PlaybackError>) -> Void

    /// One try: the reducer on the cached state (loaded first when there is none), then one call.
    func attempt(_ submission: Submission, cause: ServerMessage.Cause, number: Int, finish: @escaping Finish) {
        if let fanout, let (playback, directory) = fanout.cached() {
            run(submission, on: playback, directory: directory, cause: cause, number: number, finish: finish)
            return
        }
        // Not cached (no device of the user here, or the cache was dropped): read it first.
        let started = environment.work.submit { [self] in
            do {
                let (playback, directory) = try await loadBoth()
                fanout?.remember(playback)
                run(submission, on: playback, directory: directory, cause: cause, number: number, finish: finish)
            } catch {
                finish(.failure(unavailable(error)))
            }
        }
        if !started { finish(.failure(PlaybackError(.unavailable, "the server is shutting down; try again"))) }
    }

    func run(
        _ submission: Submission, on playback: Playback, directory: DeviceDirectory, cause: ServerMessage.Cause, number: Int,
        finish: @escaping Finish
    ) {
        guard number < ContentionBackoff.maxRounds else {
            finish(.failure(PlaybackError(.unavailable, "too many concurrent changes; try again")))
            return
        }
        if case let wait = playback.settling(at: now), wait > 0 {
            // Restored after the storage lost it: a node holding a newer snapshot may still put it
            // in its place, which a commit on top would prevent.
            finish(.failure(PlaybackError(.unavailable, "playback is being restored; try again", retryAfterMs: wait)))
            return
        }
        let reducerEnvironment = ReducerEnvironment(
            now: now, sender: submission.device, country: submission.user.country, devices: directory.presence,
            randomSeed: UInt64.random(in: 0...UInt64.max),
            confirmingDevices: submission.input.isTransfer ? directory.confirmingDevices : [])
        if number == 0, case .report(let epoch, let positionMs, _, let trackID) = submission.input, epoch == playback.epoch,
            submission.device == playback.activeDevice, trackID == playback.current?.track.id
        {
            // How far the holder's own position is from the server's extrapolation: sync you can see.
            let driftMs = abs(positionMs - playback.position(at: reducerEnvironment.now))
            Metrics.Timer(label: "playback_report_drift_seconds").recordNanoseconds(driftMs * 1_000_000)
            logger.debug("report drift", metadata: ["device.id": .string(submission.device ?? "-"), "report.drift_ms": .stringConvertible(driftMs)])
        }
        let outcome = Result { () throws(PlaybackError) -> Transition in
            try environment.reducer.apply(submission.input, to: playback, environment: reducerEnvironment, ifVersion: submission.ifVersion)
        }
        let answer: Result<Receipt, PlaybackError> = outcome.map {
            Receipt(version: $0.playback.version, entry: $0.entry, changed: $0.changed)
        }
        var requestID = submission.rememberedRequestID
        if case .failure(let error) = answer, error.code.isTransient { requestID = nil }
        var proposed: CommandCall.Change?
        if case .success(let transition) = outcome, transition.changed {
            let next = transition.playback
            let leaseOperation: CommandCall.LeaseOperation =
                transition.lease == nil ? .keep
                : next.activeDevice == nil ? .clear : .set(holder: LeaseHolder.value(of: next), ttlMs: timing.leaseTTLMs)
            proposed = CommandCall.Change(
                playback: next, json: ByteBuffer(bytes: PlaybackJSON.encode(next)), lease: leaseOperation,
                frame: BusMessage(
                    event: PlaybackEvent(transition, cause: Self.cause(of: transition, submitted: cause)).prepared,
                    devices: transition.lease == nil && next.deviceVolumes == playback.deviceVolumes ? nil : directory.list(for: next)))
        }
        let change = proposed
        let call = CommandCall(
            expectedVersion: playback.version, requestID: requestID, answer: answer, answerTTLMs: configuration.idempotencyWindowMs,
            answerCapacity: configuration.idempotencyCapacity, change: change)
        storage.command(user: userID, call) { [self] reply in
            switch reply {
            case .success(.done):
                if case .success(let transition) = outcome, let change { didCommit(transition, json: change.json, directory: directory) }
                finish(answer)
            case .success(.known(let known)):
                finish(known)
            case .success(.full(let retryAfterMs)):
                Counter(label: "playback_request_ids_full_total").increment()
                finish(.failure(PlaybackError(
                    .rateLimited, "too many request ids in the last 10 minutes (at most \(configuration.idempotencyCapacity)); try again later",
                    retryAfterMs: retryAfterMs)))
            case .success(.conflict(let current, let json)):
                Counter(label: "playback_commit_conflicts_total").increment()
                if let current, let fanout, Self.wentBack(current, seen: fanout.highWater) {
                    // Older than what this node saw: the next try loads it and restores above.
                    fanout.forgetCache(at: now)
                    attempt(submission, cause: cause, number: number + 1, finish: finish)
                } else if let current, current.settling(at: now) > 0 {
                    // Restored after the storage lost it, and still waiting for newer snapshots: the
                    // next try loads it, offering this node's newest (`loadPlayback`).
                    fanout?.forgetCache(at: now)
                    attempt(submission, cause: cause, number: number + 1, finish: finish)
                } else if let current {
                    // Another node committed first: again on the state it left, at once for the first
                    // rounds, then after a jittered pause (`ContentionBackoff`).
                    fanout?.remember(current, json: json)
                    let latest = fanout?.cached()?.directory ?? directory
                    retry(submission, on: current, directory: latest, cause: cause, number: number + 1, finish: finish)
                } else {
                    // The storage has no state (it lost it): the next try loads, and restores, it.
                    fanout?.forgetCache(at: now)
                    attempt(submission, cause: cause, number: number + 1, finish: finish)
                }
            case .failure(let error):
                finish(.failure(unavailable(error)))
            }
        }
    }

    /// Runs round `number` of a command that lost the race to commit, after its pause.
    func retry(
        _ submission: Submission, on playback: Playback, directory: DeviceDirectory, cause: ServerMessage.Cause, number: Int,
        finish: @escaping Finish
    ) {
        guard let pause = ContentionBackoff.pause(beforeRound: number, random: Double.random(in: 0...1)) else {
            Counter(label: "playback_commands_contended_total").increment()
            finish(.failure(PlaybackError(.unavailable, "too many concurrent changes; try again", retryAfterMs: ContentionBackoff.capMs)))
            return
        }
        guard pause > 0 else {
            run(submission, on: playback, directory: directory, cause: cause, number: number, finish: finish)
            return
        }
        let started = environment.work.submit { [self] in
            try? await Task.sleep(for: .milliseconds(pause))
            // The state may have moved on while it waited: the cache has the newest this node knows.
            let (newest, latest) = fanout?.cached() ?? (playback, directory)
            run(submission, on: newest.version > playback.version ? newest : playback, directory: latest, cause: cause, number: number, finish: finish)
        }
        if !started { finish(.failure(PlaybackError(.unavailable, "the server is shutting down; try again"))) }
    }

    /// The cause the devices see: a transfer undone (whatever found it: the deadline, the target's
    /// loss or release) is `transfer_failed`, naming the device that did not start.
    static func cause(of transition: Transition, submitted: ServerMessage.Cause) -> ServerMessage.Cause {
        guard let lease = transition.lease, lease.reason == .transferFailed else { return submitted }
        return ServerMessage.Cause(op: "transfer_failed", device: lease.revoked, request: submitted.request)
    }

    func didCommit(_ transition: Transition, json: ByteBuffer, directory: DeviceDirectory) {
        fanout?.remember(transition.playback, json: json)
        if let lease = transition.lease, let confirmBy = lease.confirmBy { checkConfirmation(epoch: lease.epoch, at: confirmBy) }
        environment.durability.committed(user: userID, transition: transition) { directory.records[$0]?.kind.rawValue }
        if let lease = transition.lease {
            Counter(label: "playback_lease_changes_total", dimensions: [("reason", lease.reason.rawValue)]).increment()
            logger.info("lease moved", metadata: [
                "lease.epoch": .stringConvertible(lease.epoch), "lease.reason": .string(lease.reason.rawValue),
                "lease.from": .string(lease.revoked ?? "-"), "lease.to": .string(lease.granted ?? "-"),
            ])
        }
    }

    /// At `confirmBy`, undoes the transfer at `epoch` unless its target confirmed it started (the
    /// reducer decides; a confirmed or superseded transfer makes it a no-op). Every node with devices
    /// of the user checks again in its upkeep, and a lapsed lease of the target undoes it too, so the
    /// rule holds when this node dies.
    func checkConfirmation(epoch: Int64, at confirmBy: Int64) {
        let work = environment.work
        work.submit { [self] in
            // In steps, so that a node shutting down does not wait for it (the others check).
            while case let wait = confirmBy - now, wait > 0 {
                guard !work.isFinishing else { return }
                try? await Task.sleep(for: .milliseconds(min(wait, 100)))
            }
            submitConfirmDeadline(epoch: epoch)
        }
    }

    func submitConfirmDeadline(epoch: Int64) {
        submit(Submission(user: UserIdentity(userID: userID), input: .confirmDeadline(epoch: epoch), device: nil)) { _ in }
    }

    func snapshot() async throws(PlaybackError) -> (state: PlayerState, devices: [DeviceInfo]) {
        do {
            let (playback, directory) = try await gate.run { try await loadBoth() }
            return (playback.playerState(includeQueue: true), directory.list(for: playback))
        } catch {
            throw unavailable(error)
        }
    }
}
