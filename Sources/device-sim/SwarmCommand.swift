import ArgumentParser
import DeviceSimKit
import Foundation
import PlaybackCore
import StoreInspection

// MARK: - Load

struct SwarmCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swarm", abstract: "Open-loop load: many users and devices, latency percentiles and invariants.")
    @Option(help: "The daemon; repeat for several (device i starts on server i mod n). [PLAYBACK_SERVER, default ws://127.0.0.1:8080]")
    var server: [String] = []
    @Option(help: "Users.") var users = 10
    @Option(help: "Devices per user.") var devicesPerUser = 4
    @Option(help: "Commands per second, e.g. 500 or 500/s; 0 holds the connections idle for --duration.") var rate = "100"
    @Option(help: "Duration, e.g. 30s.") var duration = "10s"
    @Option(help: "Upgrades in flight at once while connecting.") var connectConcurrency = 16
    @Option(help: "Reference mode: load an nginx+nchan fan-out instead of the daemon (nchan).") var reference: String?
    @Option(help: "Reference mode: bytes per published message.") var messageBytes = 600
    @Option(help: "Op weights, e.g. volume:4,seek:2,pause:1,resume:1,next:1,transfer:1.") var mix: String?
    @Option(help: "Source address to connect from; repeat for several (127.0.0.x).") var sourceIp: [String] = []
    @Option(help: "HS256 secret. [PLAYBACK_JWT_SECRET]") var secret: String?
    @Flag(help: "Reconnect lost devices to the next server with last_seen (fault runs) instead of counting them as violations.")
    var reconnect = false
    @Option(help: "Devices that hold the lease report their position every this many ms.") var reportMs: Int64?
    @Option(help: "The daemons' lease grace in ms, for the check that two devices never both believe they are active longer.")
    var graceMs: Int64 = 10_000
    @Flag(help: "Also compare the devices with what Redis and PostgreSQL hold at the end (--redis-url, --postgres-url).")
    var check = false
    @Option(help: "Redis for --check. [PLAYBACK_REDIS_URL]") var redisUrl: String?
    @Option(help: "PostgreSQL for --check. [PLAYBACK_POSTGRES_URL]") var postgresUrl: String?
    @Flag(help: "Print the report as JSON.") var json = false
    @Flag(help: "Read only each message's type and request id (as the nchan reference's client does) instead of decoding it; checks no invariant. For benchmarks side by side.")
    var light = false
    @Flag(help: "Devices declare transfer_confirm and confirm each start after a transfer (two-phase transfers under load).")
    var confirmStarts = false

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let urls = server.isEmpty ? [environment["PLAYBACK_SERVER"] ?? "ws://127.0.0.1:8080"] : server
        var options = Swarm.Options(servers: try urls.map { try ServerAddress(url: $0) })
        options.reconnect = reconnect
        options.reportMs = reportMs
        options.graceMs = graceMs
        options.light = light
        options.confirmStarts = confirmStarts
        guard !(light && confirmStarts) else { throw ValidationError("--confirm-starts needs the messages that --light leaves undecoded") }
        guard let commandsPerSecond = Double(rate.replacingOccurrences(of: "/s", with: "")), commandsPerSecond >= 0 else {
            throw ValidationError("--rate takes a number, e.g. 500/s (0: idle)")
        }
        guard let seconds = AccessTokens.seconds(duration), seconds > 0 else { throw ValidationError("--duration takes e.g. 30s") }
        guard users > 0, devicesPerUser > 0 else { throw ValidationError("--users and --devices-per-user must be positive") }
        options.users = users
        options.devicesPerUser = devicesPerUser
        options.rate = commandsPerSecond
        options.durationSeconds = Double(seconds)
        options.holdSeconds = Double(seconds)
        options.sourceAddresses = sourceIp
        options.secret = secret
        options.connectConcurrency = max(1, connectConcurrency)
        if let mix { options.mix = try Swarm.Options.parseMix(mix) }
        let quiet = json
        let log: @Sendable (String) -> Void = { line in
            if !quiet { FileHandle.standardError.write(Data("swarm: \(line)\n".utf8)) }
        }
        let report: SwarmReport
        switch reference {
        case nil:
            var stores: Swarm.StoreReader?
            if check {
                let inspector = StoreInspector(
                    redisURL: redisUrl ?? environment["PLAYBACK_REDIS_URL"], postgresURL: postgresUrl ?? environment["PLAYBACK_POSTGRES_URL"])
                guard inspector.redisURL != nil || inspector.postgresURL != nil else {
                    throw ValidationError("--check needs --redis-url or --postgres-url (or PLAYBACK_REDIS_URL / PLAYBACK_POSTGRES_URL)")
                }
                stores = { users in try await inspector.read(users: users) }
            }
            report = try await Swarm(options: options).run(log: log, stores: stores)
        case "nchan":
            guard commandsPerSecond > 0 else { throw ValidationError("the nchan reference needs a positive --rate") }
            report = try await NchanReference(load: options, messageBytes: messageBytes).run(log: log)
        case let other?:
            throw ValidationError("unknown reference \(other): only nchan")
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(report.text)
        }
        if report.invariantViolations > 0 { throw ExitCode(1) }
    }
}
