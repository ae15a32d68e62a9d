import Foundation
import Histogram
import PlaybackCore
import Synchronization

/// Open-loop load: many users with several devices each; commands leave at a fixed arrival
/// rate whatever the answers do, every device records each state it receives, and the report
/// gives latency percentiles, throughput, errors by code and the invariants.
public struct Swarm: Sendable {
    public struct Options: Sendable {
        /// The daemons; device `i` starts on server `i % count` and moves to the next one after a loss.
        public var servers: [ServerAddress]
        public var server: ServerAddress { servers[0] }
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
        /// Reconnect a lost device (to the next server, with `last_seen`) instead of counting it lost.
        public var reconnect = false
        /// Devices that believe they hold the lease report their position this often (ms); nil: never.
        public var reportMs: Int64?
        /// The daemons' lease grace, for invariant 6.
        public var graceMs: Int64 = 10_000
        /// Summarize messages instead of decoding them, and check no invariant: the generator then
        /// costs per message what the nchan reference's does (benchmarks side by side).
        public var light = false
        /// Devices declare `transfer_confirm` and confirm each start a grant asks them to confirm
        /// with a report at once (two-phase transfers under load and faults).
        public var confirmStarts = false

        public init(server: ServerAddress) { self.servers = [server] }

        public init(servers: [ServerAddress]) {
            precondition(!servers.isEmpty, "a swarm needs a server")
            self.servers = servers
        }

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

    /// Reads what the stores hold for these users (the invariant checker compares the devices to it).
    public typealias StoreReader = @Sendable ([String]) async throws -> (redis: [String: StoredVersion]?, postgres: [String: StoredVersion]?)

    /// Runs the load; `fault`, when given, runs while the commands are being sent (a fault test
    /// kills or stops servers there), and the load goes on for its whole duration regardless.
    public func run(
        log: @Sendable (String) -> Void = { _ in }, stores: StoreReader? = nil, fault: (@Sendable () async throws -> Void)? = nil
    ) async throws -> SwarmReport {
        let options = self.options
        let servers = options.servers
        log("connecting \(options.users * options.devicesPerUser) devices, \(options.connectConcurrency) at a time")
        var devices: [Device] = []
        for user in 0..<options.users {
            let name = "\(options.userPrefix)-u\(user)"
            let token = try await AccessTokens.mint(user: name, ttlSeconds: 3_600, secret: options.secret)
            for device in 0..<options.devicesPerUser {
                let index = devices.count
                devices.append(Device(
                    userName: name, device: "d\(device)", token: token, servers: servers, first: index,
                    source: options.sourceAddresses.isEmpty ? nil : options.sourceAddresses[index % options.sourceAddresses.count],
                    light: options.light, confirmStarts: options.confirmStarts))
            }
        }
        // Connect with a bounded number of upgrades in flight, then wait for every welcome.
        let connectStart = DispatchTime.now().uptimeNanoseconds
        let all = devices
        _ = try await openConcurrently(count: all.count, limit: options.connectConcurrency) { index in
            try await all[index].connect()
        }
        let welcomeDeadline = DispatchTime.now().uptimeNanoseconds + 30_000_000_000
        while devices.contains(where: { $0.state.withLock { $0.welcomedNs == nil } }), DispatchTime.now().uptimeNanoseconds < welcomeDeadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        let lastWelcome = devices.compactMap { $0.state.withLock { $0.welcomedNs } }.max() ?? connectStart
        let welcomed = devices.filter { $0.state.withLock { $0.welcomedNs != nil } }.count
        let connectSeconds = Double(lastWelcome - connectStart) / 1e9
        log("connected \(welcomed) devices in \(String(format: "%.2f", connectSeconds)) s")
        func finish(sent: [SentCommand], elapsed: Double) async throws -> SwarmReport {
            var report = try await SwarmReport.make(
                options: options, devices: devices, sent: sent, elapsedSeconds: elapsed, stores: stores)
            report.devicesWelcomed = welcomed
            report.connectSeconds = (connectSeconds * 1_000).rounded() / 1_000
            report.connectsPerSecond = connectSeconds > 0 ? (Double(welcomed) / connectSeconds).rounded() : 0
            await withTaskGroup(of: Void.self) { group in
                for device in devices { group.addTask { await device.stop() } }
            }
            return report
        }
        if options.rate <= 0 {
            // Idle: hold the connections, then report the connect phase only.
            log("holding \(devices.count) idle connections for \(options.holdSeconds) s")
            try await Task.sleep(for: .milliseconds(Int64(options.holdSeconds * 1_000)))
            return try await finish(sent: [], elapsed: 0)
        }
        // From here on a lost device comes back (on the next server) when asked to.
        if options.reconnect {
            for device in devices {
                let lost = device.state.withLock { state in
                    state.reconnects = true
                    return state.closed
                }
                if lost { Task { await device.reconnect() } }
            }
        }
        let reporting = devices
        let reporter = options.reportMs.map { interval in
            Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(interval))
                    let now = Int64(Date().timeIntervalSince1970 * 1_000)
                    for device in reporting { device.reportIfActive(nowMs: now) }
                }
            }
        }
        defer { reporter?.cancel() }
        try await Task.sleep(for: .milliseconds(500))
        // Something to play for every user, on its first device; the timed load starts once they are
        // answered (thousands of them are a burst of their own, which the first commands would wait behind).
        let answersReceived = { devices.reduce(0) { $0 + $1.state.withLock { $0.answers } } }
        let answeredBefore = answersReceived()
        var initSent = 0
        for user in 0..<options.users {
            if devices[user * options.devicesPerUser].send(.command(.init(
                id: "init-\(user)", command: .play(.init(context: .init(kind: "playlist", id: "p\(user % 5 + 1)"), device: "d0")))))
            {
                initSent += 1
            }
        }
        let initDeadline = ContinuousClock.now + .seconds(30)
        while answersReceived() - answeredBefore < initSent, ContinuousClock.now < initDeadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        try await Task.sleep(for: .milliseconds(500))

        log("sending \(Int(options.rate * options.durationSeconds)) commands at \(options.rate)/s")
        let faultTask = fault.map { fault in Task { try await fault() } }
        let weights = options.mix.flatMap { Array(repeating: $0.op, count: $0.weight) }
        var sent: [SentCommand] = []
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
            let op = weights[Int.random(in: 0..<weights.count, using: &generator)]
            let command: Command =
                switch op {
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
            let target = devices[user * options.devicesPerUser + device]
            // Timed from the send itself, not from before the pause until it was due (as the reference's publishes are).
            let sentNs = DispatchTime.now().uptimeNanoseconds
            if target.send(.command(.init(id: id, command: command))) {
                sent.append(SentCommand(id: id, user: target.userName, op: op, effect: SentCommand.effect(of: command), sentNs: sentNs))
            }
        }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        if let faultTask { try await faultTask.value }
        try await Task.sleep(for: .milliseconds(Int64(options.settleSeconds * 1_000)))
        // One last change per user, so the final states compared below are recent; it must be acked
        // (liveness after the faults), so it goes through a device that is connected, waiting a few
        // seconds for one to come back. A user with none still counts it: sent, never answered.
        for user in 0..<options.users {
            let userDevices = devices[(user * options.devicesPerUser)..<((user + 1) * options.devicesPerUser)]
            let id = "final-\(user)"
            let message = ClientMessage.command(.init(id: id, command: .volume(percent: 77)))
            let deadline = ContinuousClock.now + .seconds(5)
            while !userDevices.contains(where: { device in
                device.state.withLock { $0.finals[id] = message }
                return device.send(message)
            }), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            sent.append(SentCommand(
                id: id, user: userDevices[userDevices.startIndex].userName, op: "volume", effect: .volume(77),
                sentNs: DispatchTime.now().uptimeNanoseconds, timed: false))
        }
        try await Task.sleep(for: .milliseconds(Int64(max(options.settleSeconds, 1) * 1_000)))
        // Answers still on their way (a loaded machine): wait while they keep coming, up to 15 s
        // more; a command sent into a connection that was lost is never answered.
        // The final commands are waited for the whole 15 s: an answer they never get is a liveness failure.
        let finalAnswers = { devices.reduce(0) { $0 + $1.state.withLock { $0.finalAnswers } } }
        var answers = answersReceived()
        var lastProgress = ContinuousClock.now
        let giveUp = ContinuousClock.now + .seconds(15)
        while answers < answeredBefore + initSent + sent.count,
            ContinuousClock.now - lastProgress < .seconds(1) || (!options.light && finalAnswers() < options.users),
            ContinuousClock.now < giveUp
        {
            try await Task.sleep(for: .milliseconds(100))
            let now = answersReceived()
            if now > answers { lastProgress = ContinuousClock.now }
            answers = now
        }
        // The report is made before the teardown: closing the holder releases the lease and makes a version
        // that devices closed before it never see.
        return try await finish(sent: sent, elapsed: elapsed)
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
