import ArgumentParser
import DeviceSimKit
import Foundation
import PlaybackCore
import StoreInspection

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
                case .showState:
                    let position = await device.position()
                    emit(await device.state.map { Formatting.state($0, positionMs: position) } ?? "no state yet")
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
