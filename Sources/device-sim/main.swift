import ArgumentParser
import DeviceSimKit
import Foundation
import PlaybackCore
import StoreInspection

/// `device-sim`: a simulated device for people, one-shot remote commands, and a load generator.
@main
struct DeviceSim: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "device-sim",
        abstract: "A simulated playback device for playback-syncd, one-shot remote commands, and a load generator.",
        discussion: """
            Exit codes: 0 success, 1 the server answered with an error, 2 bad usage, 3 could not connect.
            Tokens are minted locally with PLAYBACK_JWT_SECRET (or --secret), else the daemon's development secret.
            """,
        subcommands: [
            Token.self, Connect.self, StateCommand.self, Devices.self, Play.self, Pause.self, Resume.self, Next.self,
            Previous.self, Seek.self, Volume.self, Repeat.self, Shuffle.self, Queue.self, Transfer.self, History.self,
            SwarmCommand.self,
        ])
}

/// Where and as whom to connect.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "The daemon. [PLAYBACK_SERVER, default ws://127.0.0.1:8080]")
    var server: String?
    @Option(help: "User id (the token's sub).")
    var user: String
    @Option(help: "HS256 secret. [PLAYBACK_JWT_SECRET, default: the development secret]")
    var secret: String?
    @Option(help: "Country claim (ISO 3166-1 alpha-2), for licensing.")
    var country: String?
    @Option(help: "For wss://: trust the certificates in this PEM file (a self-signed daemon) instead of the system's. [PLAYBACK_CA_FILE]")
    var caFile: String?

    func address() throws -> ServerAddress {
        try ServerAddress(url: server ?? ProcessInfo.processInfo.environment["PLAYBACK_SERVER"] ?? "ws://127.0.0.1:8080")
    }

    /// How to connect: TLS trust for wss://.
    func connectionOptions() throws -> DeviceConnection.Options {
        var options = DeviceConnection.Options()
        if let path = caFile ?? ProcessInfo.processInfo.environment["PLAYBACK_CA_FILE"] {
            options.tls = try TrustedCertificates.tls(caFile: path)
        }
        return options
    }

    func token() async throws -> String {
        try await AccessTokens.mint(user: user, ttlSeconds: 3_600, country: country, secret: secret)
    }
}

struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print an access token.")
    @Option(help: "User id.") var user: String
    @Option(help: "Lifetime, e.g. 90s, 15m, 12h, 7d.") var ttl = "24h"
    @Option(help: "HS256 secret. [PLAYBACK_JWT_SECRET]") var secret: String?
    @Option(help: "Country claim.") var country: String?

    func run() async throws {
        guard let seconds = AccessTokens.seconds(ttl), seconds > 0 else { throw ValidationError("--ttl takes e.g. 90s, 15m, 12h or 7d") }
        print(try await AccessTokens.mint(user: user, ttlSeconds: seconds, country: country, secret: secret))
    }
}

// MARK: - The long-lived device

struct Connect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Be a device: play in simulated time, obey the lease, take commands from the keyboard.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Shown name.") var name: String
    @Option(help: "computer, smartphone, speaker, tv, web, car or other.") var kind = "computer"
    @Option(help: "Device id (1-64 of A-Z a-z 0-9 . _ -); default: the name in lower case.") var id: String?
    @Flag(help: "Print every received message as one JSON line instead of text.") var json = false
    @Option(help: "Progress report interval, ms.") var reportMs: Int64 = 5_000
    @Flag(help: "Be a broken target: take transfers but never start, so the daemon hands playback back (transfer_failed).")
    var failStart = false
    @Flag(help: "Do not declare transfer_confirm in hello: transfers here need no confirmation (a device of the first protocol).")
    var noConfirm = false

    func run() async throws {
        guard let kind = DeviceKind(rawValue: kind) else { throw ValidationError("unknown kind \(kind)") }
        let deviceID = id ?? name.lowercased().filter { $0.isLetter || $0.isNumber || "._-".contains($0) }
        guard DeviceID.isValid(deviceID) else { throw ValidationError("invalid device id \(deviceID)") }
        let connection = self.connection
        var options = SimulatedDevice.Options(server: try connection.address()) { try await connection.token() }
        options.connection = try connection.connectionOptions()
        options.reportIntervalMs = reportMs
        options.failStart = failStart
        if noConfirm { options.capabilities = [] }
        guard !(failStart && noConfirm) else { throw ValidationError("--fail-start needs the confirmation that --no-confirm turns off") }
        let device = SimulatedDevice(identity: .init(id: deviceID, name: name, kind: kind), options: options)
        let console = Console(json: json, device: device)
        let running = Task { await device.run() }
        let printing = Task { await console.printOutputs() }
        let status = Task { await console.refreshStatus() }
        await console.readCommands()
        await device.stop()
        await running.value
        status.cancel()
        await printing.value
    }
}

/// Prints what the device receives and runs what the person types.
actor Console {
    let json: Bool
    let device: SimulatedDevice
    let interactive = isatty(STDOUT_FILENO) == 1
    let codec = MessageCodec()

    init(json: Bool, device: SimulatedDevice) {
        self.json = json
        self.device = device
    }

    func printOutputs() async {
        for await output in device.outputs {
            switch output {
            case .received(let message):
                if json {
                    emit(String(decoding: (try? codec.encode(message)) ?? Data(), as: UTF8.self))
                } else if let text = await describe(message) {
                    emit(text)
                }
            case .connection(let text), .stopped(let text):
                if !json { emit("· \(text)") }
            }
        }
    }

    func readCommands() async {
        if !json { emit("type help for commands") }
        while let line = await Task.detached(operation: { readLine() }).value {
            guard !line.trimmingCharacters(in: .whitespaces).isEmpty else { continue }
            do {
                switch try CommandParser.parse(line, device: device.identity.id) {
                case .command(let command):
                    let answer = await device.command(command)
                    if !json { emit(describeAnswer(answer)) }  // in JSON mode the answer is printed as received
                case .showDevices: emit(Formatting.devices(await device.devices))
                case .showState: emit(await device.state.map { Formatting.state($0) } ?? "no state yet")
                case .help: emit(CommandParser.help)
                case .quit: return
                }
            } catch {
                emit("? \(error)")
            }
        }
    }

    func refreshStatus() async {
        guard interactive, !json else { return }
        while !Task.isCancelled {
            await drawStatus()
            try? await Task.sleep(for: .seconds(1))
        }
    }

    private func emit(_ line: String) {
        write((interactive && !json ? "\r\u{1B}[2K" : "") + line + "\n")
    }

    private func write(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }

    private func drawStatus() async {
        let state = await device.state
        let active = await device.isActive
        let position = await device.position() ?? 0
        var status = "[\(device.identity.id)\(active ? " ● active" : "")]"
        if let state, let track = state.track {
            status += " \(state.isPlaying ? "▶" : "❚❚") \(track.title) — \(track.artist) \(CommandParser.clock(position))/\(CommandParser.clock(track.durationMs))"
            status += " on \(state.activeDevice ?? "nobody") vol \(state.volume)"
        } else {
            status += " nothing playing"
        }
        write("\r\u{1B}[2K" + status)
    }

    private func describe(_ message: ServerMessage) async -> String? {
        switch message {
        case .welcome(let welcome): "welcome: \(Formatting.state(welcome.state))\n\(Formatting.devices(welcome.devices))"
        case .state(let event) where event.cause.op == "transfer_failed":
            "state v\(event.state.version): \(event.cause.device ?? "the target") did not start; "
                + (event.state.activeDevice.map { "back on \($0)" } ?? "paused") + ": \(Formatting.state(event.state))"
        case .state(let event): "state v\(event.state.version): \(Formatting.state(event.state)) (\(event.cause.op) by \(event.cause.device ?? "server"))"
        case .leaseGranted(let grant):
            "▶ this device is now active (epoch \(grant.epoch)), starting at \(CommandParser.clock(grant.state.position(at: grant.state.positionAt)))"
                + (grant.confirmBy == nil ? "" : ", confirming the start")
        case .leaseRevoked(let revoked): "■ \(revoked.message) (\(revoked.reason.rawValue), epoch \(revoked.epoch))"
        case .devices(let devices): Formatting.devices(devices)
        case .error(let error) where error.id == nil: "error \(error.code.rawValue): \(error.message)"
        case .ack, .error, .clock, .history: nil
        }
    }

    private func describeAnswer(_ answer: ServerMessage?) -> String {
        switch answer {
        case .ack(let ack)?: "ok (version \(ack.version)\(ack.entry.map { ", entry \($0)" } ?? ""))"
        case .error(let error)?: "error \(error.code.rawValue): \(error.message)"
        default: "no answer"
        }
    }
}

// MARK: - One-shot commands

/// Connects as a short-lived device, does one thing, prints the result, exits with its code.
struct OneShot {
    static func run(_ connection: ConnectionOptions, id: String?, _ action: (SimulatedDevice) async -> Int32) async throws -> Never {
        var options = SimulatedDevice.Options(server: try connection.address()) { try await connection.token() }
        options.connection = try connection.connectionOptions()
        options.answerTimeout = .seconds(10)
        options.reconnect = false
        let device = SimulatedDevice(
            identity: .init(id: id ?? "device-sim-\(ProcessInfo.processInfo.processIdentifier)", name: "device-sim", kind: .other),
            options: options)
        let runner = Task { await device.run() }
        guard await device.waitUntilConnected(timeout: .seconds(10)) else {
            FileHandle.standardError.write(Data("could not connect to the daemon at \(try connection.address())\n".utf8))
            Foundation.exit(3)
        }
        let code = await action(device)
        await device.stop()
        runner.cancel()
        Foundation.exit(code)
    }

    /// Sends a command and prints the answer; exit code 0 on ack, 1 on error.
    static func send(_ command: Command, on device: SimulatedDevice) async -> Int32 {
        switch await device.command(command) {
        case .ack(let ack)?:
            print("ok version=\(ack.version)\(ack.entry.map { " entry=\($0)" } ?? "")")
            return 0
        case .error(let error)?:
            print("error \(error.code.rawValue): \(error.message)")
            return 1
        default:
            print("error: no answer from the daemon")
            return 1
        }
    }

    static func parse(_ words: [String]) throws -> Command {
        do {
            guard case .command(let command) = try CommandParser.parse(words.joined(separator: " "), device: nil) else {
                throw ValidationError("not a command")
            }
            return command
        } catch let failure as CommandParser.Failure {
            throw ValidationError(failure.description)
        }
    }
}

struct StateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "state", abstract: "Print the user's player state.")
    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print the state as JSON.") var json = false

    func run() async throws {
        try await OneShot.run(connection, id: nil) { device in
            guard let state = await device.state else { return 1 }
            print(json ? String(decoding: (try? JSONEncoder().encode(state)) ?? Data(), as: UTF8.self) : Formatting.state(state))
            return 0
        }
    }
}

struct History: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List recently played tracks, newest first.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "How many, 1-50.") var limit = PlayedItem.defaultLimit
    @Flag(help: "Print the items as JSON.") var json = false

    func run() async throws {
        guard (1...PlayedItem.maxLimit).contains(limit) else { throw ValidationError("--limit must be from 1 to \(PlayedItem.maxLimit)") }
        try await OneShot.run(connection, id: nil) { device in
            switch await device.history(limit: limit) {
            case .history(let history)?:
                print(json ? String(decoding: (try? JSONEncoder().encode(history.items)) ?? Data(), as: UTF8.self) : Formatting.history(history.items))
                return 0
            case .error(let error)?:
                FileHandle.standardError.write(Data("error \(error.code.rawValue): \(error.message)\n".utf8))
                return 1
            default:
                FileHandle.standardError.write(Data("no answer\n".utf8))
                return 1
            }
        }
    }
}

struct Devices: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the user's devices.")
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        try await OneShot.run(connection, id: nil) { device in
            print(Formatting.devices(await device.devices.filter { $0.id != device.identity.id }))
            return 0
        }
    }
}

struct Play: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Play a track, list or context (default: resume), on --device or the active device.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "Track ids; several make a list.") var tracks: [String] = []
    @Option(help: "A context, e.g. album:a01 or playlist:p1.") var context: String?
    @Option(help: "Start position, M:SS or seconds.") var at: String?
    @Option(help: "The device to play on (default: the active one).") var device: String?

    func run() async throws {
        var play = Command.Play(device: device)
        if tracks.count == 1 { play.trackID = tracks[0] } else if tracks.count > 1 { play.trackIDs = tracks }
        if let context {
            let parts = context.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { throw ValidationError("--context takes KIND:ID, e.g. album:a01") }
            play.context = PlaybackContext(kind: String(parts[0]), id: String(parts[1]))
            if tracks.count == 1 { play.trackIDs = nil }
        }
        if let at {
            guard let ms = CommandParser.positionMs(at) else { throw ValidationError("--at takes M:SS or seconds") }
            play.positionMs = ms
        }
        let command = play
        try await OneShot.run(connection, id: nil) { sim in
            if command.device == nil, await sim.state?.activeDevice == nil {
                print("error no_active_device: no device is active; name one with --device")
                return 1
            }
            return await OneShot.send(.play(command), on: sim)
        }
    }
}

/// One-shot commands whose words are the interactive syntax (`seek 1:23`, `vol 40`, …).
protocol WordsCommand: AsyncParsableCommand {
    static var verb: String { get }
    var connection: ConnectionOptions { get }
    var words: [String] { get }
}

extension WordsCommand {
    func run() async throws {
        let command = try OneShot.parse([Self.verb] + words)
        try await OneShot.run(connection, id: nil) { await OneShot.send(command, on: $0) }
    }
}

struct Pause: WordsCommand {
    static let configuration = CommandConfiguration(abstract: "Pause.")
    static let verb = "pause"
    @OptionGroup var connection: ConnectionOptions
    var words: [String] { [] }
}

struct Resume: WordsCommand {
    static let configuration = CommandConfiguration(abstract: "Resume on the active device.")
    static let verb = "resume"
    @OptionGroup var connection: ConnectionOptions
    var words: [String] { [] }
}

struct Next: WordsCommand {
    static let configuration = CommandConfiguration(abstract: "Skip to the next entry.")
    static let verb = "next"
    @OptionGroup var connection: ConnectionOptions
    var words: [String] { [] }
}

struct Previous: WordsCommand {
    static let configuration = CommandConfiguration(commandName: "prev", abstract: "Previous track (restarts when more than 3 s in).")
    static let verb = "prev"
    @OptionGroup var connection: ConnectionOptions
    var words: [String] { [] }
}

struct Seek: WordsCommand {
    static let configuration = CommandConfiguration(abstract: "Seek to M:SS or seconds.")
    static let verb = "seek"
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "Position, e.g. 1:23.") var position: String
    var words: [String] { [position] }
}

struct Volume: WordsCommand {
    static let configuration = CommandConfiguration(commandName: "vol", abstract: "Set the volume, 0-100.")
    static let verb = "vol"
    @OptionGroup var connection: ConnectionOptions
    @Argument var percent: String
    var words: [String] { [percent] }
}

struct Repeat: WordsCommand {
    static let configuration = CommandConfiguration(abstract: "Set repeat: off, track or context.")
    static let verb = "repeat"
    @OptionGroup var connection: ConnectionOptions
    @Argument var mode: String
    var words: [String] { [mode] }
}

struct Shuffle: WordsCommand {
    static let configuration = CommandConfiguration(abstract: "Shuffle on or off.")
    static let verb = "shuffle"
    @OptionGroup var connection: ConnectionOptions
    @Argument var on: String
    var words: [String] { [on] }
}

struct Queue: WordsCommand {
    static let configuration = CommandConfiguration(abstract: "queue add TRACK [next] | rm ENTRY | mv ENTRY INDEX | clear")
    static let verb = "queue"
    @OptionGroup var connection: ConnectionOptions
    @Argument var arguments: [String]
    var words: [String] { arguments }
}

struct Transfer: WordsCommand {
    static let configuration = CommandConfiguration(abstract: "Move playback to another device at the exact position.")
    static let verb = "transfer"
    @OptionGroup var connection: ConnectionOptions
    @Argument var device: String
    @Flag(help: "Start playing there.") var play = false
    var words: [String] { [device] + (play ? ["play"] : []) }
}

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
