import NIOCore
import PlaybackCore

/// What a command makes the storage do, decided from values: the reducer's outcome on the state
/// this node holds becomes one `CommandCall` (what it writes, moves, publishes and remembers).
struct CommitPlan {
    /// The storage call.
    var call: CommandCall
    /// The answer the command gets once the call is done.
    var answer: Result<Receipt, PlaybackError>
    /// What the commit changes, when it changes something (nil: it only confirms the version).
    var transition: Transition?

    /// The plan for `outcome`, the reducer's answer to `submission` on `playback`.
    ///
    /// - A change writes the new state, moves the lease when the transition moved it (set to the
    ///   new holder for `leaseTTLMs`, cleared when nobody holds it), and publishes the event, with
    ///   the device list only when the lease or a device's volume changed.
    /// - Nothing changed, or refused: the version is confirmed (a refusal was decided on it).
    /// - The answer is remembered under the request id of a command, unless it is a transient
    ///   refusal (trying again may succeed).
    static func make(
        _ submission: Submission, outcome: Result<Transition, PlaybackError>, on playback: Playback, directory: DeviceDirectory,
        cause: ServerMessage.Cause, configuration: EngineConfiguration, leaseTTLMs: Int64, turn: CommandCall.Turn?,
        traceParent: String? = nil
    ) -> CommitPlan {
        let answer = outcome.map { Receipt(version: $0.playback.version, entry: $0.entry, changed: $0.changed) }
        var requestID = submission.rememberedRequestID
        if case .failure(let error) = answer, error.code.isTransient { requestID = nil }
        var change: CommandCall.Change?
        var committed: Transition?
        if case .success(let transition) = outcome, transition.changed {
            let next = transition.playback
            let lease: CommandCall.LeaseOperation =
                transition.lease == nil ? .keep
                : next.activeDevice == nil ? .clear : .set(holder: LeaseHolder.value(of: next), ttlMs: leaseTTLMs)
            let listChanged = transition.lease != nil || next.deviceVolumes != playback.deviceVolumes
            var frame = BusMessage(
                event: PlaybackEvent(transition, cause: Self.cause(of: transition, submitted: cause)).prepared,
                devices: listChanged ? directory.list(for: next) : nil)
            frame.traceParent = traceParent
            change = CommandCall.Change(playback: next, json: ByteBuffer(bytes: PlaybackJSON.encode(next)), lease: lease, frame: frame)
            committed = transition
        }
        let call = CommandCall(
            expectedVersion: playback.version, requestID: requestID, answer: answer, answerTTLMs: configuration.idempotencyWindowMs,
            answerCapacity: configuration.idempotencyCapacity, change: change, turn: turn)
        return CommitPlan(call: call, answer: answer, transition: committed)
    }

    /// The cause the devices see: a transfer undone (whatever found it: the deadline, the target's
    /// loss or release) is `transfer_failed`, naming the device that did not start.
    static func cause(of transition: Transition, submitted: ServerMessage.Cause) -> ServerMessage.Cause {
        guard let lease = transition.lease, lease.reason == .transferFailed else { return submitted }
        return ServerMessage.Cause(op: "transfer_failed", device: lease.revoked, request: submitted.request)
    }
}
