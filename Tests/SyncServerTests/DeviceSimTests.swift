import DeviceSimKit
import Foundation
import PlaybackCore
import Synchronization
import SyncServer
import Testing

/// `device-sim` run as a real subprocess, reading its output line by line.
final class SimProcess: Sendable {
    let process: ChildProcess
    let input: Pipe
    let lines: Inbox

    /// The `device-sim` built next to the test binary.
    static var executable: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("device-sim")
    }

    init(_ arguments: [String]) throws {
        input = Pipe()
        let output = Pipe()
        let lines = Inbox()
        self.lines = lines
        process = try ChildProcess(
            Self.executable.path, arguments,
            pipes: (input.fileHandleForReading.fileDescriptor, output.fileHandleForWriting.fileDescriptor))
        // The child has its own copies; ours of its ends would keep the pipes open.
        try input.fileHandleForReading.close()
        try output.fileHandleForWriting.close()
        let handle = output.fileHandleForReading
        Thread.detachNewThread {
            var pending = Data()
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                pending.append(chunk)
                while let newline = pending.firstIndex(of: 0x0A) {
                    lines.push(.undecodable(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)))
                    pending.removeSubrange(pending.startIndex...newline)
                }
            }
            lines.push(.disconnected)
        }
    }

    /// Runs to completion; returns the exit code and everything printed.
    static func run(_ arguments: [String]) async throws -> (code: Int32, output: String) {
        let sim = try SimProcess(arguments)
        var text: [String] = []
        while let event = await sim.lines.next(timeout: .seconds(30)) {
            guard case .undecodable(let line) = event else { break }
            text.append(line)
        }
        guard case .exited(let code) = try await offloaded({ sim.process.wait() }) else { return (-1, text.joined(separator: "\n")) }
        return (code, text.joined(separator: "\n"))
    }

    /// The next printed message of a type (for `--json` devices).
    func expect(_ type: String, timeout: Duration = .seconds(10)) async throws -> ServerMessage {
        while let event = await lines.next(timeout: timeout) {
            guard case .undecodable(let line) = event else { break }
            if let message = try? MessageCodec().decodeServerMessage(Array(line.utf8)), message.type == type { return message }
        }
        throw TestTimeout(waitingFor: "device-sim to print \(type)")
    }

    /// Asks it to quit; it is reaped on a thread of its own (not on one of the cooperative threads).
    func quit() {
        input.fileHandleForWriting.write(Data("quit\n".utf8))
        try? input.fileHandleForWriting.close()
        let process = self.process
        Thread.detachNewThread { _ = process.wait() }
    }
}

@Suite("device-sim, as a subprocess", .serialized)
struct DeviceSimTests {
    @Test func theExecutableIsBuilt() {
        #expect(FileManager.default.isExecutableFile(atPath: SimProcess.executable.path), "swift build builds device-sim")
    }

    /// A kitchen speaker (started with `kitchenFlags`) and a phone, both `device-sim connect --json`
    /// of alice on a fresh server, welcomed; `address` names the server and the user for one-shot commands.
    func withKitchenAndPhone(
        kitchenFlags: [String] = [], _ configure: (inout ServerConfiguration) -> Void = { _ in },
        _ body: (_ kitchen: SimProcess, _ phone: SimProcess, _ address: [String]) async throws -> Void
    ) async throws {
        try await TestServer.with(configure) { server in
            let address = ["--server", "ws://127.0.0.1:\(server.port)", "--user", "alice"]
            let kitchen = try SimProcess(["connect", "--name", "Kitchen", "--kind", "speaker", "--json"] + kitchenFlags + address)
            let phone = try SimProcess(["connect", "--name", "Phone", "--kind", "smartphone", "--json"] + address)
            defer {
                kitchen.quit()
                phone.quit()
            }
            _ = try await kitchen.expect("welcome")
            _ = try await phone.expect("welcome")
            try await body(kitchen, phone, address)
        }
    }

    @Test func aTransferRevokesTheOldDeviceAndTheNewOnePlaysAtTheSamePosition() async throws {
        try await withKitchenAndPhone { kitchen, phone, address in
            let before = ContinuousClock.now
            let play = try await SimProcess.run(["play", "t0042", "--device", "kitchen", "--at", "1:00"] + address)
            #expect(play.code == 0, "\(play.output)")
            guard case .leaseGranted(let started) = try await kitchen.expect("lease_granted") else { return }
            try await Task.sleep(for: .milliseconds(1_500))
            let transfer = try await SimProcess.run(["transfer", "phone"] + address)
            #expect(transfer.code == 0 && transfer.output.hasPrefix("ok"), "\(transfer.output)")
            guard case .leaseRevoked(let revoked) = try await kitchen.expect("lease_revoked") else { return }
            #expect(revoked.reason == .transferred && revoked.by == "phone")
            guard case .leaseGranted(let granted) = try await phone.expect("lease_granted") else { return }
            #expect(granted.state.isPlaying && granted.state.track?.id == "t0042")
            // It kept playing on the kitchen through the 1.5 s pause, and for no longer than all of it
            // took (plus a second for the kitchen's clock offset, which it reports by).
            let elapsedMs = milliseconds(since: before)
            #expect(started.state.positionMs == 60_000)
            #expect((61_000...61_000 + elapsedMs).contains(granted.state.positionMs), "granted \(granted.state.positionMs) after \(elapsedMs) ms")
        }
    }

    @Test func aTargetThatFailsToStartHandsPlaybackBack() async throws {
        try await withKitchenAndPhone(kitchenFlags: ["--fail-start"], { $0.engine.limits.transferConfirmMs = 500 }) { kitchen, phone, address in
            #expect(try await SimProcess.run(["play", "t0042", "--device", "phone"] + address).code == 0)
            _ = try await phone.expect("lease_granted")
            #expect(try await SimProcess.run(["transfer", "kitchen"] + address).code == 0)
            guard case .leaseGranted(let grant) = try await kitchen.expect("lease_granted") else { return }
            #expect(grant.confirmBy != nil, "device-sim declares transfer_confirm")
            guard case .leaseRevoked(let revoked) = try await kitchen.expect("lease_revoked") else { return }
            #expect(revoked.reason == .transferFailed && revoked.by == "phone")
            guard case .leaseGranted(let back) = try await phone.expect("lease_granted") else { return }
            #expect(back.state.activeDevice == "phone" && back.state.isPlaying && back.state.positionMs == grant.state.positionMs)
            // The phone confirms a transfer to itself at once: it stays there.
            #expect(try await SimProcess.run(["transfer", "kitchen"] + address).code == 0)
            #expect(try await SimProcess.run(["transfer", "phone"] + address).code == 0)
            guard case .leaseGranted(let again) = try await phone.expect("lease_granted") else { return }
            try await Task.sleep(for: .milliseconds(1_000))
            let state = try await SimProcess.run(["state", "--json"] + address)
            #expect(state.output.contains("\"active_device\":\"phone\"") && state.output.contains("\"epoch\":\(again.epoch)"), "\(state.output)")
        }
    }

    @Test func aSmallSwarmReportsNoInvariantViolations() async throws {
        try await TestServer.with { server in
            let result = try await SimProcess.run([
                "swarm", "--server", "ws://127.0.0.1:\(server.port)", "--users", "3", "--devices-per-user", "3", "--rate", "40/s",
                "--duration", "2s", "--json",
            ])
            #expect(result.code == 0, "\(result.output)")
            let report = try JSONDecoder().decode(SwarmReport.self, from: Data(result.output.utf8))
            #expect(report.invariantViolations == 0, "\(report.invariants.details)")
            #expect(report.commandsSent == 83 && report.commandsAnswered == 83, "80 commands, then one last one per user")
            #expect(report.commandToLastDevice.count > 0)
        }
    }

    /// One-shot commands are a remote control, not a device: after several of them the user's
    /// devices are the ones that connected, with no `device-sim-<pid>` left behind (offline for a day).
    @Test func oneShotCommandsLeaveNoDeviceBehind() async throws {
        try await TestServer.with { server in
            let (speaker, _) = try await server.device("kitchen", user: "carol", kind: .speaker)
            let address = ["--server", "ws://127.0.0.1:\(server.port)", "--user", "carol.\(server.namespace)"]
            let play = try await SimProcess.run(["play", "t0001", "--device", "kitchen"] + address)
            #expect(play.code == 0 && play.output.hasPrefix("ok version="), "\(play.output)")
            _ = try await speaker.expect("lease_granted")
            for words in [["state"], ["pause"], ["vol", "40"], ["history"]] {
                let run = try await SimProcess.run(words + address)
                #expect(run.code == 0, "\(words): \(run.output)")
            }
            let devices = try await SimProcess.run(["devices"] + address)
            #expect(devices.code == 0 && devices.output.contains("kitchen") && !devices.output.contains("device-sim"), "\(devices.output)")
            let (_, listed) = try await RESTTests().remote(server, user: "carol").json("GET", "/v1/me/player/devices")
            let ids = (listed["devices"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
            #expect(ids == ["kitchen"], "\(ids)")
        }
    }

    /// With an identity provider, device-sim takes its token as given.
    @Test func anIdentityProvidersTokenIsUsedAsGiven() async throws {
        let key = try await SigningKey.ec("idp-1")
        try await KeySetServer.with([key]) { issuer in
            try await TestServer.with({ issuer.configure(&$0) }) { server in
                let token = try await key.sign(IdPClaims(sub: "erin.\(server.namespace)"))
                let speaker = try await TestClient.connect(port: server.port, token: token)
                _ = try await speaker.hello("kitchen", kind: .speaker)
                let address = ["--server", "ws://127.0.0.1:\(server.port)", "--access-token", token]
                let play = try await SimProcess.run(["play", "t0001", "--device", "kitchen"] + address)
                #expect(play.code == 0 && play.output.hasPrefix("ok version="), "\(play.output)")
                _ = try await speaker.expect("lease_granted")
                // A token it would mint with the development secret is refused beside a JWKS.
                let minted = try await SimProcess.run(["state", "--server", "ws://127.0.0.1:\(server.port)", "--user", "erin.\(server.namespace)"])
                #expect(minted.code == 3, "\(minted.output)")
            }
        }
    }

    /// `state` prints where a playing track is now, not where the state was taken.
    @Test func stateShowsThePositionNow() async throws {
        try await TestServer.with { server in
            let (speaker, _) = try await server.device("kitchen", user: "dave", kind: .speaker)
            let address = ["--server", "ws://127.0.0.1:\(server.port)", "--user", "dave.\(server.namespace)"]
            #expect(try await SimProcess.run(["play", "t0001", "--device", "kitchen"] + address).code == 0)
            _ = try await speaker.expect("lease_granted")
            func position() async throws -> String {
                let output = try await SimProcess.run(["state"] + address).output
                return output.firstMatch(of: /at (\d+:\d\d)\//).map { String($0.output.1) } ?? "none: \(output)"
            }
            let first = try await position()
            try await Task.sleep(for: .milliseconds(2_100))
            let second = try await position()
            #expect(first != second && !second.hasPrefix("none"), "\(first) then \(second)")
        }
    }

    @Test func oneShotErrorsExitNonZero() async throws {
        try await TestServer.with { server in
            let address = ["--server", "ws://127.0.0.1:\(server.port)", "--user", "bob"]
            let seek = try await SimProcess.run(["seek", "1:00"] + address)
            #expect(seek.code == 1 && seek.output.contains("bad_request"), "\(seek.output)")
            let volume = try await SimProcess.run(["vol", "500"] + address)
            #expect(volume.code == 1, "\(volume.output)")
            let ok = try await SimProcess.run(["vol", "50"] + address)
            #expect(ok.code == 0 && ok.output == "ok version=1", "\(ok.output)")
            let state = try await SimProcess.run(["state"] + address)
            #expect(state.code == 0 && state.output.contains("nothing loaded"), "\(state.output)")
            let usage = try await SimProcess.run(["seek", "soon"] + address)
            #expect(usage.code != 0 && usage.code != 1)
            let unreachable = try await SimProcess.run(["pause", "--server", "ws://127.0.0.1:1", "--user", "bob"])
            #expect(unreachable.code == 3)
        }
    }
}

@Suite("device-sim command language")
struct CommandParserTests {
    @Test(arguments: [
        ("play t0042", CommandParser.Parsed.command(.play(.init(trackID: "t0042", device: "me")))),
        ("play", .command(.play(.init(device: "me")))),
        ("seek 1:23", .command(.seek(positionMs: 83_000))),
        ("seek 90", .command(.seek(positionMs: 90_000))),
        ("vol 40", .command(.volume(percent: 40))),
        ("repeat track", .command(.setRepeat(.track))),
        ("shuffle on", .command(.setShuffle(true))),
        ("queue add t0042 next", .command(.queueAdd(trackID: "t0042", at: .next))),
        ("queue rm e3", .command(.queueRemove(entry: "e3"))),
        ("queue mv e3 0", .command(.queueMove(entry: "e3", to: 0))),
        ("transfer phone play", .command(.transfer(device: "phone", play: true))),
        ("prev", .command(.previous)),
        ("devices", .showDevices),
        ("quit", .quit),
    ])
    func parses(line: String, expected: CommandParser.Parsed) throws {
        #expect(try CommandParser.parse(line, device: "me") == expected)
    }

    @Test(arguments: ["", "dance", "seek", "seek soon", "vol loud", "repeat sometimes", "queue mv e3", "transfer"])
    func rejects(line: String) {
        #expect(throws: CommandParser.Failure.self) { try CommandParser.parse(line, device: "me") }
    }
}
