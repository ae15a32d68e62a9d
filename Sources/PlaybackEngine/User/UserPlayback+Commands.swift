import Foundation
import Logging
import Metrics
import NIOCore
import Synchronization
import Tracing

/// A user's commands: the reducer on the cached state, one storage call, the conflict policy,
/// what a commit does on this node, and the two-phase transfer's deadline.
extension UserPlayback {
    // MARK: Commands

    /// Applies a submission and calls `completion` with the answer, after the commit (the change
    /// reaches the devices through the bus). From any thread: the command hops to the user's loop.
    nonisolated func submit(_ submission: Submission, completion: @escaping @Sendable (Result<Receipt, PlaybackError>) -> Void) {
        onLoop { user in user.submitHere(submission, completion: completion) }
    }

    /// `submit` on the user's loop.
    func submitHere(_ submission: Submission, completion: @escaping @Sendable (Result<Receipt, PlaybackError>) -> Void) {
        let cause = ServerMessage.Cause(op: submission.input.causeOp, device: submission.device, request: submission.requestID)
        if let span = CommandTracing.span("engine \(cause.op)", under: submission.traceContext) {
            // The engine's part: the wait for the user's turn, every round, the answer.
            span.attributes["playback.user"] = userID
            var submission = submission
            submission.traceContext = span.context
            gate.enqueue { [self] done in
                attempt(submission, cause: cause, rounds: .init(startedAt: now)) { result in
                    span.end(with: result)
                    completion(result)
                    done()
                }
            }
            return
        }
        gate.enqueue { [self] done in
            attempt(submission, cause: cause, rounds: .init(startedAt: now)) { result in
                completion(result)
                done()
            }
        }
    }

    /// Applies an input while holding the gate (disconnects, upkeep).
    func apply(_ submission: Submission, cause: ServerMessage.Cause) async -> Result<Receipt, PlaybackError> {
        await withCheckedContinuation { continuation in
            attempt(submission, cause: cause, rounds: .init(startedAt: now)) { continuation.resume(returning: $0) }
        }
    }

    typealias Finish = @Sendable (Result<Receipt, PlaybackError>) -> Void

    /// One try: the reducer on the cached state (loaded first when there is none), then one call.
    func attempt(_ submission: Submission, cause: ServerMessage.Cause, rounds: ConflictPolicy.Rounds, finish: @escaping Finish) {
        var submission = submission
        if submission.user.country == nil, environment.durability.looksUpCountries {
            guard let known = storedCountry, known.expiresAt > now else {
                // Licensing needs the country: looked up once per user every few minutes, in the gate.
                let started = environment.work.submit { [self, submission] in
                    let found = await environment.durability.lookUpCountry(of: userID)
                    await foundCountry(found, submission, cause: cause, rounds: rounds, finish: finish)
                }
                if !started { finish(.failure(PlaybackError(.unavailable, "the server is shutting down; try again"))) }
                return
            }
            submission.user.country = known.country
        }
        if let fanout, let (playback, directory) = fanout.cached() {
            run(submission, on: playback, directory: directory, cause: cause, rounds: rounds, finish: finish)
            return
        }
        // Not cached (no device of the user here, or the cache was dropped): read it first.
        let started = environment.work.submit { [self, submission] in
            await loadAndRun(submission, cause: cause, rounds: rounds, finish: finish)
        }
        if !started { finish(.failure(PlaybackError(.unavailable, "the server is shutting down; try again"))) }
    }

    private func foundCountry(
        _ found: Durability.CachedCountry, _ submission: Submission, cause: ServerMessage.Cause, rounds: ConflictPolicy.Rounds,
        finish: @escaping Finish
    ) {
        storedCountry = found
        var submission = submission
        submission.user.country = found.country
        attempt(submission, cause: cause, rounds: rounds, finish: finish)
    }

    private func loadAndRun(_ submission: Submission, cause: ServerMessage.Cause, rounds: ConflictPolicy.Rounds, finish: @escaping Finish) async {
        do {
            let (playback, directory) = try await loadBoth()
            fanout?.remember(playback)
            run(submission, on: playback, directory: directory, cause: cause, rounds: rounds, finish: finish)
        } catch {
            finish(.failure(unavailable(error)))
        }
    }

    func run(
        _ submission: Submission, on playback: Playback, directory: DeviceDirectory, cause: ServerMessage.Cause,
        rounds: ConflictPolicy.Rounds, finish: @escaping Finish
    ) {
        let now = self.now
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
        if rounds.lost == 0 { recordDrift(of: submission, on: playback, at: now) }
        let outcome = Result { () throws(PlaybackError) -> Transition in
            try environment.reducer.apply(submission.input, to: playback, environment: reducerEnvironment, ifVersion: submission.ifVersion)
        }
        var rounds = rounds
        if rounds.asksForTurn, rounds.turnToken == nil { rounds.turnToken = newTurnToken() }
        let turn = rounds.turnToken.map { CommandCall.Turn(token: $0, ttlMs: ConflictPolicy.turnTTLMs) }
        let asked = rounds
        // One span per round's storage call; the change's frame carries it to every daemon.
        let storageSpan = CommandTracing.span("storage command", under: submission.traceContext, kind: .client)
        storageSpan?.attributes["db.system"] = storage.system
        storageSpan?.attributes["playback.expected_version"] = Int(playback.version)
        let plan = CommitPlan.make(
            submission, outcome: outcome, on: playback, directory: directory, cause: cause, configuration: configuration,
            leaseTTLMs: timing.leaseTTLMs, turn: turn, traceParent: storageSpan.flatMap { CommandTracing.traceParent(of: $0.context) })
        storage.command(user: userID, plan.call) { [self] reply in
            if let storageSpan {
                if case .failure(let error) = reply { storageSpan.recordError(error) }
                storageSpan.end()
            }
            onLoop { user in user.answered(reply, plan: plan, submission, on: playback, directory: directory, cause: cause, rounds: asked, finish: finish) }
        }
    }

    /// What the storage answered to `plan`, tried on `playback` in `rounds`.
    private func answered(
        _ reply: Result<CommandReply, any Error>, plan: CommitPlan, _ submission: Submission, on playback: Playback, directory: DeviceDirectory,
        cause: ServerMessage.Cause, rounds asked: ConflictPolicy.Rounds, finish: @escaping Finish
    ) {
        switch reply {
        case .success(.done):
            if let transition = plan.transition, let change = plan.call.change { didCommit(transition, json: change.json, directory: directory) }
            finish(plan.answer)
        case .success(.known(let known)):
            finish(known)
        case .success(.full(let retryAfterMs)):
            Counter(label: "playback_request_ids_full_total").increment()
            finish(.failure(PlaybackError(
                .rateLimited, "too many request ids in the last 10 minutes (at most \(configuration.idempotencyCapacity)); try again later",
                retryAfterMs: retryAfterMs)))
        case .success(.conflict(let current, let json)):
            Counter(label: "playback_commit_conflicts_total").increment()
            let step = ConflictPolicy.afterConflict(
                current, seen: fanout?.highWater ?? (0, 0), rounds: asked, now: self.now, random: Double.random(in: 0...1))
            // The state another node left is the newest there is; one that went back is not kept.
            if case .retry = step, let current { fanout?.remember(current, json: json) }
            var next = asked
            next.lost += 1
            take(step, submission, on: playback, directory: directory, cause: cause, rounds: next, finish: finish)
        case .success(.turnHeld(let heldMs)):
            Counter(label: "playback_command_turn_waits_total").increment()
            let step = ConflictPolicy.afterTurnHeld(forMs: heldMs, rounds: asked, now: self.now, random: Double.random(in: 0...1))
            take(step, submission, on: playback, directory: directory, cause: cause, rounds: asked, finish: finish)
        case .failure(let error):
            finish(.failure(unavailable(error)))
        }
    }

    /// Carries out what `ConflictPolicy` decided for a command the storage did not take on `tried`.
    func take(
        _ step: ConflictPolicy.Step, _ submission: Submission, on tried: Playback, directory: DeviceDirectory, cause: ServerMessage.Cause,
        rounds: ConflictPolicy.Rounds, finish: @escaping Finish
    ) {
        switch step {
        case .giveUp(let retryAfterMs):
            Counter(label: "playback_commands_contended_total").increment()
            finish(.failure(PlaybackError(.unavailable, "too many concurrent changes; try again", retryAfterMs: retryAfterMs)))
        case .reload:
            // Older than this node saw, restored and settling, or gone: the next try loads (and restores) it.
            fanout?.forgetCache(at: now)
            attempt(submission, cause: cause, rounds: rounds, finish: finish)
        case .retry(let playback, let afterMs) where afterMs == 0:
            let latest = fanout?.cached()?.directory ?? directory
            run(submission, on: playback, directory: latest, cause: cause, rounds: rounds, finish: finish)
        case .retry(let playback, let pause):
            again(after: pause, on: playback, submission, directory: directory, cause: cause, rounds: rounds, finish: finish)
        case .wait(let pause):
            waitForTurn(above: tried.version, atMost: pause, submission, cause: cause, rounds: rounds, finish: finish)
        }
    }

    /// The next round after `pause` ms, on the newest state this node knows by then (the cache
    /// follows the bus while it waits), or `playback` when that is newer.
    func again(
        after pause: Int64, on playback: Playback, _ submission: Submission, directory: DeviceDirectory, cause: ServerMessage.Cause,
        rounds: ConflictPolicy.Rounds, finish: @escaping Finish
    ) {
        loop.scheduleTask(in: .milliseconds(pause)) { [self] in
            onLoop { user in
                let (newest, latest) = user.fanout?.cached() ?? (playback, directory)
                user.run(
                    submission, on: newest.version > playback.version ? newest : playback, directory: latest, cause: cause, rounds: rounds,
                    finish: finish)
            }
        }
    }

    /// Another command has the user's turn: the next round starts when its commit comes on the bus
    /// (above `version`), or after `pause` ms (it may have changed nothing, or its node died).
    func waitForTurn(
        above version: Int64, atMost pause: Int64, _ submission: Submission, cause: ServerMessage.Cause, rounds: ConflictPolicy.Rounds,
        finish: @escaping Finish
    ) {
        let once = Once()
        let next: @Sendable () -> Void = { [self] in
            onLoop { user in
                guard once.claim() else { return }
                guard let (newest, latest) = user.fanout?.cached() else {
                    user.attempt(submission, cause: cause, rounds: rounds, finish: finish)
                    return
                }
                user.run(submission, on: newest, directory: latest, cause: cause, rounds: rounds, finish: finish)
            }
        }
        let waiter = fanout?.whenChanged(above: version, next) ?? nil
        loop.scheduleTask(in: .milliseconds(pause)) { [self] in
            onLoop { user in
                if let waiter { user.fanout?.forgetWaiter(waiter) }
                next()
            }
        }
    }

    /// How far the holder's own position is from the server's extrapolation: sync you can see.
    func recordDrift(of submission: Submission, on playback: Playback, at now: Int64) {
        guard case .report(let epoch, let positionMs, _, let trackID) = submission.input, epoch == playback.epoch,
            submission.device == playback.activeDevice, trackID == playback.current?.track.id
        else { return }
        let driftMs = abs(positionMs - playback.position(at: now))
        Metrics.Timer(label: "playback_report_drift_seconds").recordNanoseconds(driftMs * 1_000_000)
        logger.debug("report drift", metadata: ["device.id": .string(submission.device ?? "-"), "report.drift_ms": .stringConvertible(driftMs)])
    }

    /// A token no other command has, on any node: the user's turn names it (`CommandCall.Turn`).
    func newTurnToken() -> String { "\(environment.nodeID):\(UInt64.random(in: 0...UInt64.max))" }

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

    nonisolated func submitConfirmDeadline(epoch: Int64) {
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

/// Lets the first of several callers through (a wake-up and its timer).
final class Once: Sendable {
    private let claimed = Atomic<Bool>(false)

    /// True for the first caller only.
    func claim() -> Bool { !claimed.exchange(true, ordering: .acquiringAndReleasing) }
}
