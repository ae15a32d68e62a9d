import ArgumentParser
import DeviceSimKit
import Foundation
import PlaybackCore
import StoreInspection

// MARK: - One-shot commands

/// Connects as a remote control (never listed as one of the user's devices), does one thing,
/// prints the result, exits with its code.
struct OneShot {
    static func run(_ connection: ConnectionOptions, _ action: (SimulatedDevice) async -> Int32) async throws -> Never {
        var options = SimulatedDevice.Options(server: try connection.address()) { try await connection.token() }
        options.connection = try connection.connectionOptions()
        options.answerTimeout = .seconds(10)
        options.reconnect = false
        options.remote = true
        let device = SimulatedDevice(
            identity: .init(id: "device-sim-\(ProcessInfo.processInfo.processIdentifier)", name: "device-sim", kind: .other),
            options: options)
        let runner = Task { await device.run() }
        guard await device.waitUntilConnected(timeout: .seconds(10)) else {
            let reason = await device.lastConnectError.map { ": \($0)" } ?? ""
            FileHandle.standardError.write(Data("could not connect to the daemon at \(try connection.address())\(reason)\n".utf8))
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
        try await OneShot.run(connection) { device in
            guard let state = await device.state else { return 1 }
            // Where it plays now, not where the state was taken (a playing track's position moves).
            let position = await device.position()
            print(json ? String(decoding: (try? JSONEncoder().encode(state)) ?? Data(), as: UTF8.self) : Formatting.state(state, positionMs: position))
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
        try await OneShot.run(connection) { device in
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
        try await OneShot.run(connection) { device in
            print(Formatting.devices(await device.devices))
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
        try await OneShot.run(connection) { sim in
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
        try await OneShot.run(connection) { await OneShot.send(command, on: $0) }
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
