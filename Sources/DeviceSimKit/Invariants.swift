import Foundation
import PlaybackCore
import Synchronization

/// Checks the invariants of ../ARCHITECTURE.md ("Invariants") over what every device saw and
/// what the stores ended with:
/// 1. epochs strictly increase per user; 2. only the holder's reports at the current epoch change
/// state; 3. each device sees rising versions and a version is one state; 4. devices, Redis and
/// the PostgreSQL snapshot converge; 5. every acked command is in the state or superseded, none
/// twice; 6. at most one device believes it is active for longer than the lease grace.
///
/// A device's belief in its lease starts with `lease_granted` (or a `welcome` naming it active)
/// and ends with `lease_revoked`, its connection's end, or when it has heard nothing from the
/// server, pings included, for the lease grace: a client that cannot hear the server must assume
/// the lease lapsed.
public struct InvariantChecker: Sendable {
    public var graceMs: Int64
    /// Whether the run ended quiet, so that devices and stores must agree (invariant 4).
    public var expectConvergence = true

    public init(graceMs: Int64) { self.graceMs = graceMs }

    public func check(
        devices: [DeviceHistory], commands: [SentCommand], redis: [String: StoredVersion]? = nil,
        postgres: [String: StoredVersion]? = nil, endNs: UInt64
    ) -> InvariantReport {
        var report = InvariantReport()
        report.commands.sent = commands.count
        let byUser = Dictionary(grouping: devices, by: \.user)
        let commandsByUser = Dictionary(grouping: commands, by: \.user)
        for (user, histories) in byUser.sorted(by: { $0.key < $1.key }) {
            checkUser(
                user, histories: histories, commands: commandsByUser[user] ?? [], redis: redis?[user], postgres: postgres?[user],
                hasStores: (redis, postgres), endNs: endNs, into: &report)
        }
        return report
    }

    private struct Seen {
        var state: PlayerState
        var cause: ServerMessage.Cause?
        var device: String
    }

    private func checkUser(
        _ user: String, histories: [DeviceHistory], commands: [SentCommand], redis: StoredVersion?, postgres: StoredVersion?,
        hasStores: ([String: StoredVersion]?, [String: StoredVersion]?), endNs: UInt64, into report: inout InvariantReport
    ) {
        // Every state any device saw, by version (queues left out: `state` events omit unchanged ones).
        var byVersion: [Int64: Seen] = [:]
        var causedBy: [String: Set<Int64>] = [:]
        var acks: [String: (version: Int64, ns: UInt64)] = [:]
        var firstSeen: [Int64: UInt64] = [:]
        var grantedTo: [Int64: String] = [:]
        var finals: [(device: String, state: PlayerState)] = []
        var beliefs: [(device: String, from: UInt64, to: UInt64)] = []

        for history in histories {
            var highest: Int64 = -1
            var highestGrant: Int64 = -1
            var lastState: PlayerState?
            var open = false
            var believedSince: UInt64?
            var lastHeard: UInt64 = 0
            var leaseEpoch: Int64 = 0
            func endBelief(at ns: UInt64) {
                if let since = believedSince { beliefs.append((history.device, since, max(since, ns))) }
                believedSince = nil
            }
            func heard(at ns: UInt64) {
                // Silence longer than the grace ended the belief where the grace ran out.
                if believedSince != nil, ns > lastHeard + UInt64(graceMs) * 1_000_000 { endBelief(at: lastHeard + UInt64(graceMs) * 1_000_000) }
                lastHeard = ns
            }
            func remember(_ state: PlayerState, cause: ServerMessage.Cause?, at ns: UInt64) {
                firstSeen[state.version] = min(firstSeen[state.version] ?? .max, ns)
                var bare = state
                bare.queue = nil
                if let seen = byVersion[state.version] {
                    if seen.state != bare {
                        report.versionViolations += 1
                        report.note("user \(user): version \(state.version) is two states (\(seen.device) and \(history.device))")
                    }
                    if seen.cause == nil, cause != nil { byVersion[state.version]?.cause = cause }
                } else {
                    byVersion[state.version] = Seen(state: bare, cause: cause, device: history.device)
                }
                if let request = cause?.request { causedBy[request, default: []].insert(state.version) }
            }
            for event in history.events {
                switch event {
                case .connected(_, let ns):
                    open = true
                    lastHeard = ns
                case .pinged(let ns), .summary(_, let ns):
                    heard(at: ns)
                case .closed(_, let ns):
                    heard(at: ns)
                    endBelief(at: ns)
                    open = false
                case .received(let message, let ns):
                    heard(at: ns)
                    switch message {
                    case .welcome(let welcome):
                        if welcome.state.version < highest {
                            report.versionViolations += 1
                            report.note("user \(user) device \(history.device): welcome at version \(welcome.state.version) after \(highest)")
                        }
                        highest = max(highest, welcome.state.version)
                        remember(welcome.state, cause: nil, at: ns)
                        lastState = welcome.state
                        leaseEpoch = max(leaseEpoch, welcome.state.epoch)
                        if welcome.state.activeDevice == history.device, believedSince == nil { believedSince = ns }
                    case .state(let event):
                        if event.state.version <= highest {
                            report.versionViolations += 1
                            report.note("user \(user) device \(history.device): version \(event.state.version) after \(highest)")
                        }
                        highest = max(highest, event.state.version)
                        remember(event.state, cause: event.cause, at: ns)
                        lastState = event.state
                    case .leaseGranted(let grant):
                        remember(grant.state, cause: nil, at: ns)
                        if grant.epoch <= highestGrant {
                            report.epochsNotRising += 1
                            report.note("user \(user) device \(history.device): granted epoch \(grant.epoch) after \(highestGrant)")
                        }
                        if let other = grantedTo[grant.epoch], other != history.device {
                            report.epochsNotRising += 1
                            report.note("user \(user): epoch \(grant.epoch) granted to \(other) and \(history.device)")
                        }
                        grantedTo[grant.epoch] = history.device
                        highestGrant = max(highestGrant, grant.epoch)
                        if grant.epoch >= leaseEpoch {
                            leaseEpoch = grant.epoch
                            if believedSince == nil { believedSince = ns }
                        }
                    case .leaseRevoked(let revoked):
                        if revoked.epoch >= leaseEpoch {
                            leaseEpoch = revoked.epoch
                            endBelief(at: ns)
                        }
                    case .ack(let ack):
                        acks[ack.id] = (ack.version, ns)
                    case .error(let error):
                        report.commands.errors[error.code.rawValue, default: 0] += 1
                        if error.code == .staleEpoch { report.commands.fencedReports += 1 }
                    default:
                        break
                    }
                }
            }
            heard(at: endNs)
            endBelief(at: endNs)
            if open, let lastState { finals.append((history.device, lastState)) }
        }

        // 1. Epochs never go down as versions rise.
        let ordered = byVersion.sorted { $0.key < $1.key }
        for (previous, next) in zip(ordered, ordered.dropFirst()) where next.value.state.epoch < previous.value.state.epoch {
            report.epochsNotRising += 1
            report.note("user \(user): epoch \(previous.value.state.epoch) at v\(previous.key), then \(next.value.state.epoch) at v\(next.key)")
        }
        let highestEpoch = ordered.map(\.value.state.epoch).max() ?? 0
        if let redis, redis.epoch < highestEpoch {
            report.epochsNotRising += 1
            report.note("user \(user): Redis ended at epoch \(redis.epoch), below \(highestEpoch) handed out")
        }

        // 2. A report changed state only from the holder at the current epoch.
        for (previous, next) in zip(ordered, ordered.dropFirst()) where next.key == previous.key + 1 {
            guard let cause = next.value.cause, cause.op == "report" || cause.op == "track_ended" else { continue }
            if previous.value.state.activeDevice != cause.device || previous.value.state.epoch != next.value.state.epoch {
                report.staleChanges += 1
                report.note("user \(user): \(cause.op) by \(cause.device ?? "-") made v\(next.key) while \(previous.value.state.activeDevice ?? "nobody") held epoch \(previous.value.state.epoch)")
            }
        }

        // 4. Convergence: the connected devices, Redis and PostgreSQL end on one version.
        if expectConvergence {
            var versions = Set(finals.map(\.state.version))
            if hasStores.0 != nil { versions.insert(redis?.version ?? -1) }
            if hasStores.1 != nil { versions.insert(postgres?.version ?? -1) }
            let states = Set(finals.map { final -> PlayerState in
                var bare = final.state
                bare.queue = nil
                return bare
            })
            if versions.count > 1 || states.count > 1 {
                report.divergentUsers += 1
                let devices = finals.map { "\($0.device)=v\($0.state.version)" }.joined(separator: " ")
                report.note("user \(user) diverged: \(devices) redis=v\(redis?.version ?? -1) postgres=v\(postgres?.version ?? -1)")
            }
        }

        // 5. Every acked command is in the state or superseded, none twice; and a restore from an
        //    older snapshot that undid one is a loss (a rollback), not a supersession.
        let finalVersion = redis?.version ?? ordered.last?.key ?? 0
        let ackedByVersion = commands.compactMap { command in acks[command.id].map { (version: $0.version, op: command.op) } }
        for command in commands {
            if (causedBy[command.id]?.count ?? 0) > 1 {
                report.commands.appliedTwice += 1
                report.note("user \(user): \(command.id) caused versions \(causedBy[command.id]?.sorted() ?? [])")
            }
            guard let (version, ackNs) = acks[command.id] else {
                if !command.timed {
                    report.commands.finalNotAcked += 1
                    report.note("user \(user): the final command \(command.id) was not acked")
                }
                continue
            }
            report.commands.acked += 1
            if version > finalVersion {
                report.commands.lost += 1
                report.commands.lostAcks.append(ackNs)
                report.note("user \(user): \(command.id) acked at v\(version), but the state ended at v\(finalVersion)")
                continue
            }
            if let effect = command.effect, let undoing = rollback(of: effect, ackedAt: version, in: ordered, acked: ackedByVersion) {
                report.commands.lost += 1
                report.commands.lostAcks.append(ackNs)
                report.commands.rolledBack += 1
                let ageMs = Int64((firstSeen[undoing] ?? ackNs) &- ackNs) / 1_000_000
                report.commands.rolledBackMaxAgeMs = max(report.commands.rolledBackMaxAgeMs, ageMs)
                let made = byVersion[version]?.cause.map { "\($0.op) by \($0.device ?? "-")" } ?? "unseen"
                report.note("user \(user): \(command.id) acked at v\(version) (\(effect); v\(version) made by \(made)), undone by the restore at v\(undoing) \(ageMs) ms later")
            } else if causedBy[command.id]?.contains(version) == true {
                report.commands.applied += 1
            } else if let seen = byVersion[version], let effect = command.effect {
                if holds(effect, in: seen.state) {
                    report.commands.noOps += 1
                } else {
                    report.commands.lost += 1
                    report.commands.lostAcks.append(ackNs)
                    report.note("user \(user): \(command.id) acked at v\(version), which a device saw without its effect (\(effect))")
                }
            } else {
                report.commands.unobserved += 1
            }
        }

        // 6. At most one device believes it is active for longer than the grace.
        let graceNs = UInt64(graceMs) * 1_000_000
        for (index, first) in beliefs.enumerated() {
            for second in beliefs[(index + 1)...] where second.device != first.device {
                let overlap = Int64(min(first.to, second.to)) - Int64(max(first.from, second.from))
                if overlap > Int64(graceNs) {
                    report.overlappingLeases += 1
                    report.note("user \(user): \(first.device) and \(second.device) both believed they were active for \(overlap / 1_000_000) ms")
                }
            }
        }
    }

    /// The version of the restore that undid `effect`, acked at `version`, if it stayed undone: a
    /// restored state lacks the effect, no command acked in between could have changed the same
    /// thing, and no later restore (a newer snapshot another daemon held) put it back before
    /// something else changed the state. Nil when the effect lasted, or something legitimate
    /// changed it first.
    ///
    /// A restored state is one with cause `restored`, or a `recovered` one (a stored state sent
    /// again after the bus was down) whose epoch jumped by a restore's margin: a restore raises
    /// epochs and versions by 1,000 plus the snapshot's age, a lease change by one.
    private func rollback(
        of effect: SentCommand.Effect, ackedAt version: Int64, in ordered: [(key: Int64, value: Seen)],
        acked: [(version: Int64, op: String)]
    ) -> Int64? {
        var undoneAt: Int64?
        var epoch = ordered.last(where: { $0.key <= version })?.value.state.epoch ?? 0
        for (later, seen) in ordered where later > version {
            let holdsHere = holds(effect, in: seen.state)
            let restored = seen.cause?.op == "restored" || (seen.cause?.op == "recovered" && seen.state.epoch >= epoch + Self.restoreJump)
            epoch = max(epoch, seen.state.epoch)
            if restored {
                if holdsHere {
                    undoneAt = nil  // put back by a newer snapshot
                } else if undoneAt == nil,
                    !acked.contains(where: { $0.version > version && $0.version < later && SentCommand.op($0.op, mayChange: effect) })
                {
                    undoneAt = later
                }
                continue
            }
            // A change nothing restored: superseded if the effect was still there, lost for good if undone.
            if !holdsHere || undoneAt != nil { break }
        }
        return undoneAt
    }

    /// The least a restore raises the epoch by (docs/durability.md).
    static let restoreJump: Int64 = 1_000

    private func holds(_ effect: SentCommand.Effect, in state: PlayerState) -> Bool {
        switch effect {
        case .volume(let percent): state.volume == percent
        case .playing(let playing): state.isPlaying == playing || state.track == nil
        case .activeDevice(let device): state.activeDevice == device
        }
    }
}
