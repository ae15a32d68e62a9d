import Foundation
import PlaybackCore
import Testing

/// A remote control (`hello` with `role: remote`) sees and changes the user's playback and is no
/// device: never listed, never counted, never active. On both engines.
@Suite("remote controls")
struct RemoteControlTests {
    @Test(arguments: EngineKind.allCases)
    func aRemoteIsNeverListedAndItsCommandsComeFromNoDevice(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let (speaker, _) = try await server.device("speaker", kind: .speaker)
            let remote = try await server.connect()
            try await remote.send(.hello(.init(device: .init(id: "speaker", name: "Remote", kind: .other), role: .remote)))
            guard case .welcome(let welcome) = try await remote.expect("welcome") else { return }
            #expect(welcome.devices.map(\.id) == ["speaker"], "the remote sees the devices, not itself")
            // The same id as a device: the device's connection stays (a remote never replaces one).
            try await remote.acked("p", .play(.init(trackID: "t0001", device: "speaker")))
            _ = try await speaker.expect("lease_granted")
            guard case .state(let event) = try await remote.expect("state") else { return }
            let state = event.state
            #expect(state.activeDevice == "speaker" && state.track?.id == "t0001", "the remote gets every state")
            #expect(event.cause.device == nil && event.cause.request == "p", "from no device: \(event.cause)")

            // Without a device named, play goes to the active device, never to the remote.
            try await remote.acked("pause", .pause)
            try await remote.acked("resume", .play(.init()))
            // It plays nothing: no transfer to it, no report from it.
            let other = try await server.connect()
            try await other.send(.hello(.init(device: .init(id: "cli-1", name: "CLI", kind: .other), role: .remote)))
            _ = try await other.expect("welcome")
            let transfer = try await remote.command("t", .transfer(device: "cli-1", play: nil))
            guard case .error(let refused) = transfer else { Issue.record("a transfer to a remote was acked"); return }
            #expect(refused.error.code == .deviceNotFound, "\(refused.error)")
            try await remote.send(.report(.init(id: "r1", epoch: state.epoch, positionMs: 10, isPlaying: true, trackID: "t0001")))
            guard case .error(let report) = try await remote.expect("error") else { return }
            #expect(report.error.code == .badRequest && report.id == "r1")

            // A device joining after it sees only devices; its leaving changes no list.
            let (phone, phoneWelcome) = try await server.device("phone")
            #expect(Set(phoneWelcome.devices.map(\.id)) == ["speaker", "phone"], "\(phoneWelcome.devices.map(\.id))")
            await remote.drop()
            try await phone.acked("seek", .seek(positionMs: 5_000))
            let (_, later) = try await server.device("tv", kind: .tv)
            #expect(!later.devices.contains { $0.id.contains("remote") || $0.name == "Remote" }, "\(later.devices.map(\.id))")
            _ = phone
        }
    }
}
