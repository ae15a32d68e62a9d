import Foundation
import Histogram
import PlaybackCore

/// The outcome of a swarm run: latency percentiles (ms), throughput, errors by code, and
/// the invariants checked over every device's log.
public struct SwarmReport: Codable, Sendable {
    public struct Percentiles: Codable, Sendable {
        public var count: UInt64
        public var p50: Double
        public var p90: Double
        public var p99: Double
        public var p999: Double
        public var max: Double
        /// The latency (ms) at each of `curvePercentiles`, for percentile plots.
        public var curve: [Double]

        public static let curvePercentiles: [Double] = [0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100]

        init(_ histogram: Histogram<UInt64>) {
            func ms(_ microseconds: UInt64) -> Double { Double(microseconds) / 1_000 }
            count = histogram.totalCount
            p50 = ms(histogram.valueAtPercentile(50))
            p90 = ms(histogram.valueAtPercentile(90))
            p99 = ms(histogram.valueAtPercentile(99))
            p999 = ms(histogram.valueAtPercentile(99.9))
            max = ms(histogram.max)
            curve = Self.curvePercentiles.map { ms($0 >= 100 ? histogram.max : histogram.valueAtPercentile($0)) }
        }
    }

    public var users: Int
    public var devicesPerUser: Int
    public var commandsSent: Int
    public var commandsAnswered: Int
    public var durationSeconds: Double
    public var throughputPerSecond: Double
    public var stateDeliveries: Int
    /// Command sent → its ack or error, ms.
    public var commandToAck: Percentiles
    /// Command sent → the state it caused reached the last device of the user, ms.
    public var commandToLastDevice: Percentiles
    /// The audible gap of a transfer, ms: the old device's last playing moment (it hears
    /// `lease_revoked` and stops) to the new one's first (it hears `lease_granted` and starts), on
    /// this process's clock; 0 when the new one started first. Transfers of paused playback are
    /// left out when the messages were decoded (light runs count every handover).
    public var transferGap: Percentiles?
    public var errors: [String: Int]
    /// The six invariants and what became of every command.
    public var invariants: InvariantReport
    /// Connections that ended before the run did (without `reconnect`, each one is a violation).
    public var disconnections = 0
    /// How those connections ended: close code (0: dropped without one) → count.
    public var closeCodes: [Int: Int] = [:]
    public var invariantViolations = 0
    /// What Redis and PostgreSQL ended with, when they were read.
    public struct Stores: Codable, Sendable {
        public var redis: [String: StoredVersion]?
        public var postgres: [String: StoredVersion]?
    }
    public var stores: Stores?
    /// Devices connected and welcomed, and how fast (upgrade + hello + welcome), per second.
    public var devicesWelcomed = 0
    public var connectSeconds = 0.0
    public var connectsPerSecond = 0.0

    static func make(
        options: Swarm.Options, devices: [Swarm.Device], sent: [SentCommand], elapsedSeconds: Double,
        stores: Swarm.StoreReader?
    ) async throws -> SwarmReport {
        let endNs = DispatchTime.now().uptimeNanoseconds
        let histories = devices.map(\.history)
        let stored = try await stores?(Array(Set(histories.map(\.user))).sorted())
        var checker = InvariantChecker(graceMs: options.graceMs)
        checker.expectConvergence = options.rate > 0
        // Light runs summarized every message: there is nothing to check the invariants on.
        let invariants = options.light
            ? InvariantReport()
            : checker.check(devices: histories, commands: sent, redis: stored?.redis, postgres: stored?.postgres, endNs: endNs)

        var ackHistogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        var fanoutHistogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        var errors: [String: Int] = [:]
        var answered = 0
        var deliveries = 0
        var disconnections = 0
        var closeCodes: [Int: Int] = [:]
        // Where each request's state arrived, per user: request → [receive times]; and each answer.
        var arrivals: [String: [String: [UInt64]]] = [:]
        var answers: [String: (ns: UInt64, code: String?)] = [:]
        for history in histories {
            for event in history.events {
                switch event {
                case .received(.state(let state), let ns):
                    deliveries += 1
                    if let request = state.cause.request { arrivals[history.user, default: [:]][request, default: []].append(ns) }
                case .received(.ack(let ack), let ns):
                    if answers[ack.id] == nil { answers[ack.id] = (ns, nil) }
                case .received(.error(let error), let ns):
                    if let id = error.id, answers[id] == nil { answers[id] = (ns, error.code.rawValue) }
                case .summary(let summary, let ns):
                    switch summary.type {
                    case "state":
                        deliveries += 1
                        if let request = summary.request { arrivals[history.user, default: [:]][request, default: []].append(ns) }
                    case "ack", "error":
                        if let id = summary.request, answers[id] == nil { answers[id] = (ns, summary.errorCode) }
                    default: break
                    }
                case .closed(let code, _):
                    disconnections += 1
                    closeCodes[Int(code ?? 0), default: 0] += 1
                default:
                    break
                }
            }
        }
        var answeredTimed = 0
        for command in sent {
            let answer = answers[command.id]
            if let answer {
                answered += 1
                if let code = answer.code { errors[code, default: 0] += 1 }
            }
            // The last burst (one command per user after the load) is for the convergence check, not timed.
            guard command.timed else { continue }
            if let answer {
                answeredTimed += 1
                _ = ackHistogram.record(answer.ns > command.sentNs ? (answer.ns - command.sentNs) / 1_000 : 0)
            }
            if let times = arrivals[command.user]?[command.id], times.count == options.devicesPerUser, let last = times.max() {
                _ = fanoutHistogram.record(last > command.sentNs ? (last - command.sentNs) / 1_000 : 0)
            }
        }
        var report = SwarmReport(
            users: options.users, devicesPerUser: options.devicesPerUser, commandsSent: sent.count, commandsAnswered: answered,
            durationSeconds: (elapsedSeconds * 1_000).rounded() / 1_000,
            throughputPerSecond: elapsedSeconds > 0 ? (Double(answeredTimed) / elapsedSeconds * 10).rounded() / 10 : 0,
            stateDeliveries: deliveries, commandToAck: Percentiles(ackHistogram), commandToLastDevice: Percentiles(fanoutHistogram),
            errors: errors, invariants: invariants)
        report.disconnections = disconnections
        report.closeCodes = closeCodes
        report.transferGap = transferGaps(histories)
        report.invariantViolations = invariants.total + (options.reconnect ? 0 : disconnections)
        report.stores = stored.map { Stores(redis: $0.redis, postgres: $0.postgres) }
        return report
    }

    /// Each handover's gap: every `lease_granted` (that starts playback) paired with the closest
    /// `lease_revoked` of another device of the same user within a second.
    static func transferGaps(_ histories: [DeviceHistory]) -> Percentiles? {
        struct Handover {
            var ns: UInt64
            var device: String
            var granted: Bool
        }
        var byUser: [String: [Handover]] = [:]
        for history in histories {
            for event in history.events {
                switch event {
                case .received(.leaseGranted(let grant), let ns) where grant.state.isPlaying:
                    byUser[history.user, default: []].append(Handover(ns: ns, device: history.device, granted: true))
                case .received(.leaseRevoked(let revoked), let ns) where revoked.reason == .transferred:
                    byUser[history.user, default: []].append(Handover(ns: ns, device: history.device, granted: false))
                case .summary(let summary, let ns) where summary.type == "lease_granted" || summary.type == "lease_revoked":
                    byUser[history.user, default: []].append(Handover(ns: ns, device: history.device, granted: summary.type == "lease_granted"))
                default:
                    break
                }
            }
        }
        var gaps = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        for handovers in byUser.values {
            let revokes = handovers.filter { !$0.granted }
            for grant in handovers where grant.granted {
                let closest = revokes.filter { $0.device != grant.device }
                    .min { abs(Int64(bitPattern: $0.ns &- grant.ns)) < abs(Int64(bitPattern: $1.ns &- grant.ns)) }
                guard let revoke = closest, abs(Int64(bitPattern: revoke.ns &- grant.ns)) <= 1_000_000_000 else { continue }
                _ = gaps.record(grant.ns > revoke.ns ? (grant.ns - revoke.ns) / 1_000 : 0)
            }
        }
        return gaps.totalCount > 0 ? Percentiles(gaps) : nil
    }

    /// A report for people.
    public var text: String {
        func line(_ name: String, _ p: Percentiles) -> String {
            "\(name): n=\(p.count) p50=\(p.p50) p90=\(p.p90) p99=\(p.p99) p99.9=\(p.p999) max=\(p.max) ms"
        }
        let errorText = errors.isEmpty ? "none" : errors.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        return """
            connected \(devicesWelcomed) devices in \(connectSeconds) s (\(connectsPerSecond)/s)
            users=\(users) devices/user=\(devicesPerUser) sent=\(commandsSent) answered=\(commandsAnswered) in \(durationSeconds) s \
            (\(throughputPerSecond)/s), state deliveries=\(stateDeliveries)
            \(line("command→ack", commandToAck))
            \(line("command→last device", commandToLastDevice))\(transferGap.map { "\n" + line("transfer gap (revoke→grant)", $0) } ?? "")
            errors: \(errorText); connections lost: \(disconnections)
            \(invariants.text)
            """
    }
}
