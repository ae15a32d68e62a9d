import Foundation
import Histogram
import PlaybackCore
import Synchronization

/// Open-loop load: many users with several devices each; commands leave at a fixed arrival
/// rate whatever the answers do, every device records each state it receives, and the report
/// gives latency percentiles, throughput, errors by code and the invariants.
public struct Swarm: Sendable {
    public struct Options: Sendable {
        public var server: ServerAddress
        public var users = 10
        public var devicesPerUser = 4
        public var rate = 100.0
        public var durationSeconds = 10.0
        /// Op names with weights, e.g. `volume:4,seek:2,pause:1,resume:1,next:1,transfer:1`.
        public var mix: [(op: String, weight: Int)] = [("volume", 4), ("seek", 2), ("pause", 1), ("resume", 1), ("next", 1), ("transfer", 1)]
        public var sourceAddresses: [String] = []
        public var secret: String?
        /// How long to wait after the last command for the last states.
        public var settleSeconds = 2.0
        public var userPrefix = "swarm-\(UInt32.random(in: 0...UInt32.max))"
        /// Upgrades in flight at once while connecting (a reconnect storm uses many).
        public var connectConcurrency = 16
        /// How long to keep the connections open with no commands (rate 0: an idle swarm).
        public var holdSeconds = 0.0

        public init(server: ServerAddress) { self.server = server }

        public static let knownOps: Set<String> = ["volume", "seek", "pause", "resume", "next", "previous", "transfer", "play"]

        /// Parses `op:weight,op:weight`.
        public static func parseMix(_ text: String) throws -> [(op: String, weight: Int)] {
            try text.split(separator: ",").map { item in
                let parts = item.split(separator: ":")
                let op = String(parts[0])
                guard knownOps.contains(op) else { throw SwarmError("unknown op \(op) in --mix (known: \(knownOps.sorted().joined(separator: ", ")))") }
                let weight = parts.count > 1 ? Int(parts[1]) ?? -1 : 1
                guard weight > 0 else { throw SwarmError("weight of \(op) must be a positive integer") }
                return (op, weight)
            }
        }
    }

    public struct SwarmError: Error, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    public let options: Options

    public init(options: Options) { self.options = options }

    /// One device's record of what it received.
    final class DeviceLog: Sendable {
        struct Entry {
            var version: Int64
            var receivedNs: UInt64
            var request: String?
        }

        struct State {
            var entries: [Entry] = []
            var final: PlayerState?
            var lease = LeaseBelief()
            var acks: [String: (ns: UInt64, code: String?)] = [:]
            var closed = false
            var welcomedNs: UInt64?
        }

        let user: Int
        let device: String
        let state = Mutex(State())

        init(user: Int, device: String) {
            self.user = user
            self.device = device
        }

        func record(_ event: ConnectionEvent) {
            state.withLock { state in
                switch event {
                case .message(let message, let ns):
                    state.lease.observe(message)
                    switch message {
                    case .welcome(let welcome):
                        state.final = welcome.state
                        state.welcomedNs = ns
                    case .state(let event):
                        state.entries.append(Entry(version: event.state.version, receivedNs: ns, request: event.cause.request))
                        state.final = event.state
                    case .ack(let ack): state.acks[ack.id] = (ns, nil)
                    case .error(let error): if let id = error.id { state.acks[id] = (ns, error.code.rawValue) }
                    default: break
                    }
                case .closed: state.closed = true
                case .undecodable, .compressed: break
                }
            }
        }
    }

    public func run(log: @Sendable (String) -> Void = { _ in }) async throws -> SwarmReport {
        let options = self.options
        let server = options.server
        var tokens: [String] = []
        for user in 0..<options.users {
            tokens.append(try await AccessTokens.mint(user: "\(options.userPrefix)-u\(user)", ttlSeconds: 3_600, secret: options.secret))
        }
        log("connecting \(options.users * options.devicesPerUser) devices, \(options.connectConcurrency) at a time")
        // Connect with a bounded number of upgrades in flight, then wait for every welcome.
        let connectStart = DispatchTime.now().uptimeNanoseconds
        var slots: [(user: Int, device: Int, source: String?)] = []
        for user in 0..<options.users {
            for device in 0..<options.devicesPerUser {
                let index = slots.count
                slots.append((user, device, options.sourceAddresses.isEmpty ? nil : options.sourceAddresses[index % options.sourceAddresses.count]))
            }
        }
        let logs = slots.map { DeviceLog(user: $0.user, device: "d\($0.device)") }
        let opening = slots
        let userTokens = tokens
        let connections = try await openConcurrently(count: opening.count, limit: options.connectConcurrency) { index in
            let slot = opening[index]
            let deviceLog = logs[index]
            let connection = try await DeviceConnection.connect(
                to: server, token: userTokens[slot.user], options: .init(sourceAddress: slot.source)
            ) { deviceLog.record($0) }
            connection.sendNow(.hello(.init(device: .init(id: deviceLog.device, name: "Swarm \(slot.device)", kind: .other))))
            return connection
        }
        let welcomeDeadline = DispatchTime.now().uptimeNanoseconds + 30_000_000_000
        while logs.contains(where: { $0.state.withLock { $0.welcomedNs == nil } }), DispatchTime.now().uptimeNanoseconds < welcomeDeadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        let lastWelcome = logs.compactMap { $0.state.withLock { $0.welcomedNs } }.max() ?? connectStart
        let welcomed = logs.filter { $0.state.withLock { $0.welcomedNs != nil } }.count
        let connectSeconds = Double(lastWelcome - connectStart) / 1e9
        log("connected \(welcomed) devices in \(String(format: "%.2f", connectSeconds)) s")
        if options.rate <= 0 {
            // Idle: hold the connections, then report the connect phase only.
            log("holding \(connections.count) idle connections for \(options.holdSeconds) s")
            try await Task.sleep(for: .milliseconds(Int64(options.holdSeconds * 1_000)))
            let dropped = logs.filter { log in log.state.withLock { $0.closed } }.count
            var report = SwarmReport.make(options: options, logs: logs, sent: [], elapsedSeconds: 0, disconnected: dropped)
            report.devicesWelcomed = welcomed
            report.connectSeconds = (connectSeconds * 1_000).rounded() / 1_000
            report.connectsPerSecond = connectSeconds > 0 ? (Double(welcomed) / connectSeconds).rounded() : 0
            for connection in connections { await connection.close() }
            return report
        }
        try await Task.sleep(for: .milliseconds(500))
        // Something to play for every user, on its first device.
        for user in 0..<options.users {
            connections[user * options.devicesPerUser].sendNow(.command(.init(
                id: "init-\(user)", command: .play(.init(context: .init(kind: "playlist", id: "p\(user % 5 + 1)"), device: "d0")))))
        }
        try await Task.sleep(for: .milliseconds(500))

        log("sending \(Int(options.rate * options.durationSeconds)) commands at \(options.rate)/s")
        let weights = options.mix.flatMap { Array(repeating: $0.op, count: $0.weight) }
        var sent: [(id: String, user: Int, ns: UInt64)] = []
        var generator = SystemRandomNumberGenerator()
        let total = Int(options.rate * options.durationSeconds)
        let start = DispatchTime.now().uptimeNanoseconds
        let interval = 1e9 / options.rate
        for number in 0..<total {
            let due = start + UInt64(Double(number) * interval)
            let now = DispatchTime.now().uptimeNanoseconds
            if due > now + 1_000_000 { try await Task.sleep(for: .nanoseconds(Int64(due - now))) }
            let user = Int.random(in: 0..<options.users, using: &generator)
            let device = Int.random(in: 0..<options.devicesPerUser, using: &generator)
            let other = "d\(Int.random(in: 0..<options.devicesPerUser, using: &generator))"
            let command: Command =
                switch weights[Int.random(in: 0..<weights.count, using: &generator)] {
                case "volume": .volume(percent: Int.random(in: 0...100, using: &generator))
                case "seek": .seek(positionMs: Int64.random(in: 0..<60_000, using: &generator))
                case "pause": .pause
                case "resume": .resume
                case "next": .next
                case "previous": .previous
                case "play": .play(.init(trackID: DemoTracks.random(using: &generator), device: other))
                default: .transfer(device: other, play: nil)
                }
            let id = "c\(number)"
            sent.append((id, user, DispatchTime.now().uptimeNanoseconds))
            connections[user * options.devicesPerUser + device].sendNow(.command(.init(id: id, command: command)))
        }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        try await Task.sleep(for: .milliseconds(Int64(options.settleSeconds * 1_000)))
        // One last change per user, so the final states compared below are recent.
        for user in 0..<options.users {
            connections[user * options.devicesPerUser].sendNow(.command(.init(id: "final-\(user)", command: .volume(percent: 77))))
        }
        try await Task.sleep(for: .milliseconds(Int64(max(options.settleSeconds, 1) * 1_000)))
        // The report is made before the teardown: closing the holder releases the lease and makes a version
        // that devices closed before it never see.
        let dropped = logs.filter { log in log.state.withLock { $0.closed } }.count
        var report = SwarmReport.make(options: options, logs: logs, sent: sent, elapsedSeconds: elapsed, disconnected: dropped)
        report.devicesWelcomed = welcomed
        report.connectSeconds = (connectSeconds * 1_000).rounded() / 1_000
        report.connectsPerSecond = connectSeconds > 0 ? (Double(welcomed) / connectSeconds).rounded() : 0
        for connection in connections { await connection.close() }
        return report
    }
}

/// What a device believes about the lease, from lease messages obeyed by epoch.
public struct LeaseBelief: Sendable {
    public var epoch: Int64 = 0
    public var active = false

    public mutating func observe(_ message: ServerMessage) {
        switch message {
        case .welcome(let welcome):
            if welcome.state.epoch >= epoch { (epoch, active) = (welcome.state.epoch, active && welcome.state.epoch == epoch) }
        case .leaseGranted(let grant) where grant.epoch >= epoch: (epoch, active) = (grant.epoch, true)
        case .leaseRevoked(let revoked) where revoked.epoch >= epoch: (epoch, active) = (revoked.epoch, false)
        default: break
        }
    }
}

/// Track ids of the daemon's built-in demo catalog.
enum DemoTracks {
    static func random(using generator: inout some RandomNumberGenerator) -> String {
        let number = Int.random(in: 1...300, using: &generator)
        return "t" + String(repeating: "0", count: 4 - String(number).count) + String(number)
    }
}
