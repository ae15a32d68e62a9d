import Foundation

/// Version and epoch of a user's playback as a store holds it (Redis, the PostgreSQL snapshot).
public struct StoredVersion: Sendable, Codable, Equatable {
    public var version: Int64
    public var epoch: Int64

    public init(version: Int64, epoch: Int64) {
        self.version = version
        self.epoch = epoch
    }
}

/// The outcome of checking the six invariants of ARCHITECTURE.md over a run.
public struct InvariantReport: Codable, Sendable {
    /// Commands sent, answered with `ack`, and what became of the acked ones.
    public struct Commands: Codable, Sendable {
        public var sent = 0
        public var acked = 0
        /// Acked, and a device saw the acked version caused by this command.
        public var applied = 0
        /// Acked with a version caused by something else, and the state there already had the command's effect.
        public var noOps = 0
        /// Acked, but no device saw the acked version (devices were reconnecting) and nothing contradicts it.
        public var unobserved = 0
        /// Acked, but the state at the acked version contradicts it, the stores ended below that
        /// version, or a restore from an older snapshot undid it (`rolledBack`, counted here too).
        public var lost = 0
        /// Acked and in the state, then undone by a restore (cause `restored`) from a snapshot older
        /// than it, with no later command that could have changed the same thing: lost with Redis.
        public var rolledBack = 0
        /// The oldest rolled-back command's age when its undoing state arrived (ack → restore, ms):
        /// an upper bound of the durability window the fault showed (it includes the outage itself).
        public var rolledBackMaxAgeMs: Int64 = 0
        /// Users whose last command, sent once the load and the faults were over, got no ack:
        /// the daemons stopped answering (liveness), or it was refused.
        public var finalNotAcked = 0
        /// When each lost command's ack arrived (monotonic ns, the devices' clock): a fault test
        /// checks that every loss falls in the window its fault may lose.
        public var lostAcks: [UInt64] = []
        /// Request ids that caused more than one version.
        public var appliedTwice = 0
        /// Reports and `track_ended` turned away with `stale_epoch` (fenced off).
        public var fencedReports = 0
        public var errors: [String: Int] = [:]
    }

    public var commands = Commands()
    /// 1. A user's epochs went down with rising versions, one epoch was granted to two devices, a
    ///    device was granted a lower epoch than before, or the stores ended below an epoch handed out.
    public var epochsNotRising = 0
    /// 2. A report or `track_ended` changed state without coming from the holder at the current epoch.
    public var staleChanges = 0
    /// 3. A device saw a version not newer than one before, or two different states shared a version.
    public var versionViolations = 0
    /// 4. Users whose connected devices, Redis and the PostgreSQL snapshot did not end on the same version.
    public var divergentUsers = 0
    /// 5. Acked commands lost or applied twice.
    public var commandViolations: Int { commands.lost + commands.appliedTwice }
    /// 6. Two devices of a user believed they were active at once for longer than the lease grace.
    public var overlappingLeases = 0
    /// What each violation was, for people (at most 50 lines).
    public var details: [String] = []

    /// 7. Liveness: every user's final command (after the faults) acked.
    public var livenessFailures: Int { commands.finalNotAcked }

    public var total: Int {
        epochsNotRising + staleChanges + versionViolations + divergentUsers + commandViolations + overlappingLeases + livenessFailures
    }

    mutating func note(_ line: @autoclosure () -> String) {
        if details.count < 50 { details.append(line()) }
    }

    public var text: String {
        let errorText = commands.errors.isEmpty ? "none" : commands.errors.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        return """
            commands: sent=\(commands.sent) acked=\(commands.acked) applied=\(commands.applied) no-ops=\(commands.noOps) \
            unobserved=\(commands.unobserved) lost=\(commands.lost) (rolled back=\(commands.rolledBack), oldest \(commands.rolledBackMaxAgeMs) ms) \
            applied twice=\(commands.appliedTwice) \
            fenced reports=\(commands.fencedReports) errors: \(errorText)
            invariants: 1 epochs=\(epochsNotRising) 2 stale changes=\(staleChanges) 3 versions=\(versionViolations) \
            4 divergent users=\(divergentUsers) 5 commands=\(commandViolations) 6 overlapping leases=\(overlappingLeases) \
            7 final commands not acked=\(livenessFailures) \
            → \(total == 0 ? "OK" : "VIOLATED")
            """ + details.map { "\n  " + $0 }.joined()
    }
}
