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

    public struct Invariants: Codable, Sendable {
        /// A device saw a version not newer than the one before.
        public var versionOrderViolations: Int
        /// Users whose devices ended on different versions or active devices.
        public var divergentUsers: Int
        /// Users with more than one device believing it is active.
        public var multipleActiveUsers: Int
        /// Devices whose connection ended before the end of the run.
        public var disconnectedDevices: Int
        /// For each violation, which user and devices (version/active device as each device ended).
        public var details: [String] = []

        public var total: Int { versionOrderViolations + divergentUsers + multipleActiveUsers + disconnectedDevices }
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
    public var errors: [String: Int]
    public var invariants: Invariants
    /// Devices connected and welcomed, and how fast (upgrade + hello + welcome), per second.
    public var devicesWelcomed = 0
    public var connectSeconds = 0.0
    public var connectsPerSecond = 0.0

    static func make(
        options: Swarm.Options, logs: [Swarm.DeviceLog], sent: [(id: String, user: Int, ns: UInt64)], elapsedSeconds: Double,
        disconnected: Int
    ) -> SwarmReport {
        let snapshots = logs.map { log in (log: log, state: log.state.withLock { $0 }) }
        var ackHistogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        var fanoutHistogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        var errors: [String: Int] = [:]
        var answered = 0
        // Where each request's state arrived, per user: request → [receive times].
        var arrivals: [Int: [String: [UInt64]]] = [:]
        for (log, state) in snapshots {
            for entry in state.entries {
                if let request = entry.request { arrivals[log.user, default: [:]][request, default: []].append(entry.receivedNs) }
            }
        }
        var acks: [String: (ns: UInt64, code: String?)] = [:]
        for (_, state) in snapshots { acks.merge(state.acks) { first, _ in first } }
        for command in sent {
            if let ack = acks[command.id] {
                answered += 1
                _ = ackHistogram.record(ack.ns > command.ns ? (ack.ns - command.ns) / 1_000 : 0)
                if let code = ack.code { errors[code, default: 0] += 1 }
            }
            if let times = arrivals[command.user]?[command.id], times.count == options.devicesPerUser, let last = times.max() {
                _ = fanoutHistogram.record(last > command.ns ? (last - command.ns) / 1_000 : 0)
            }
        }
        var invariants = Invariants(versionOrderViolations: 0, divergentUsers: 0, multipleActiveUsers: 0, disconnectedDevices: disconnected)
        var byUser: [Int: [(Swarm.DeviceLog, Swarm.DeviceLog.State)]] = [:]
        for snapshot in snapshots { byUser[snapshot.log.user, default: []].append(snapshot) }
        for (_, state) in snapshots {
            let versions = state.entries.map(\.version)
            invariants.versionOrderViolations += zip(versions, versions.dropFirst()).filter { $0 >= $1 }.count
        }
        for (_, devices) in byUser {
            let finals = Set(devices.map { "\($0.1.final?.version ?? -1)|\($0.1.final?.activeDevice ?? "-")" })
            let described = devices.map { "\($0.0.device)=v\($0.1.final?.version ?? -1)/\($0.1.final?.activeDevice ?? "-")\($0.1.lease.active ? "*" : "")" }
            if finals.count > 1 {
                invariants.divergentUsers += 1
                invariants.details.append("user \(devices[0].0.user) diverged: \(described.joined(separator: " "))")
            }
            if devices.filter({ $0.1.lease.active }).count > 1 {
                invariants.multipleActiveUsers += 1
                invariants.details.append("user \(devices[0].0.user) has several active devices: \(described.joined(separator: " "))")
            }
        }
        return SwarmReport(
            users: options.users, devicesPerUser: options.devicesPerUser, commandsSent: sent.count, commandsAnswered: answered,
            durationSeconds: (elapsedSeconds * 1_000).rounded() / 1_000,
            throughputPerSecond: elapsedSeconds > 0 ? (Double(answered) / elapsedSeconds * 10).rounded() / 10 : 0,
            stateDeliveries: snapshots.reduce(0) { $0 + $1.state.entries.count },
            commandToAck: Percentiles(ackHistogram), commandToLastDevice: Percentiles(fanoutHistogram), errors: errors,
            invariants: invariants)
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
            \(line("command→last device", commandToLastDevice))
            errors: \(errorText)
            invariants: version order violations=\(invariants.versionOrderViolations), divergent users=\(invariants.divergentUsers), \
            users with several active devices=\(invariants.multipleActiveUsers), disconnected devices=\(invariants.disconnectedDevices) \
            → \(invariants.total == 0 ? "OK" : "VIOLATED")
            """ + invariants.details.map { "\n  " + $0 }.joined()
    }
}
