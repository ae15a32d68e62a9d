import Foundation
import PlaybackCore
import Testing

/// Two-phase transfers on both engines: a target that declared `transfer_confirm` and does not
/// report that it plays by `confirm_by` hands playback back to the device it came from.
@Suite("transfers that must be confirmed")
struct TransferConfirmTests {
    static let confirmMs: Int64 = 400

    static func start<T>(_ engine: EngineKind, confirmMs: Int64 = confirmMs, _ body: (TestServer) async throws -> T) async throws -> T {
        try await TestServer.with(engine: engine, { $0.engine.limits.transferConfirmMs = confirmMs }, body)
    }

    /// The phone plays t0001; the speaker confirms its starts.
    static func playingOnThePhone(_ server: TestServer) async throws -> (phone: TestClient, speaker: TestClient) {
        let (phone, _) = try await server.device("phone")
        let (speaker, _) = try await server.device("speaker", kind: .speaker, capabilities: [Capability.transferConfirm, "hologram"])
        try await phone.command("p", .play(.init(trackID: "t0001", device: "phone")))
        _ = try await phone.expect("lease_granted")
        return (phone, speaker)
    }

    /// `playingOnThePhone`, then the phone transfers to the speaker: the speaker's grant.
    static func transferredToTheSpeaker(_ server: TestServer) async throws
        -> (phone: TestClient, speaker: TestClient, grant: ServerMessage.LeaseGranted)
    {
        let (phone, speaker) = try await playingOnThePhone(server)
        try await phone.command("t", .transfer(device: "speaker", play: nil))
        guard case .leaseGranted(let grant) = try await speaker.expect("lease_granted") else { throw TestFailure("no grant") }
        return (phone, speaker, grant)
    }

    @Test(arguments: EngineKind.allCases)
    func anUnconfirmedTransferGoesBackToTheSource(engine: EngineKind) async throws {
        try await Self.start(engine) { server in
            let (phone, speaker, grant) = try await Self.transferredToTheSpeaker(server)
            let confirmBy = try #require(grant.confirmBy, "the grant says by when to confirm")
            #expect(abs(confirmBy - (grant.state.positionAt + Self.confirmMs)) <= 50)
            // The speaker never starts: the phone gets playback back at the handover position.
            guard case .leaseGranted(let back) = try await phone.expect("lease_granted") else { return }
            #expect(back.epoch == grant.epoch + 1 && back.confirmBy == nil)
            #expect(back.state.activeDevice == "phone" && back.state.isPlaying)
            #expect(back.state.positionMs == grant.state.positionMs, "nothing was heard on the speaker")
            #expect(back.state.positionAt >= confirmBy)
            guard case .leaseRevoked(let revoked) = try await speaker.expect("lease_revoked") else { return }
            #expect(revoked.reason == .transferFailed && revoked.by == "phone")
            var cause: ServerMessage.Cause?
            while cause?.op != "transfer_failed" {
                guard case .state(let event) = try await phone.expect("state") else { continue }
                cause = event.cause
            }
            #expect(cause?.device == "speaker")
            // The speaker's late confirmation is stale.
            try await speaker.send(.report(.init(epoch: grant.epoch, positionMs: 1_000, isPlaying: true, trackID: "t0001")))
            guard case .error(let error) = try await speaker.expect("error") else { return }
            #expect(error.code == .staleEpoch)
        }
    }

    @Test(arguments: EngineKind.allCases)
    func aConfirmedTransferStays(engine: EngineKind) async throws {
        // Time for the grant and the confirmation to travel, on a busy machine too.
        try await Self.start(engine, confirmMs: 5_000) { server in
            let (_, speaker, grant) = try await Self.transferredToTheSpeaker(server)
            try await speaker.send(.report(.init(
                epoch: grant.epoch, positionMs: grant.state.positionMs, isPlaying: true, trackID: "t0001")))
            try await Task.sleep(for: .milliseconds(5_500))
            let (_, player) = try await RESTTests().remote(server).json("GET", "/v1/me/player")
            let state = player["state"] as? [String: Any]
            #expect(state?["active_device"] as? String == "speaker" && state?["epoch"] as? Int == Int(grant.epoch), "\(player)")
            #expect(state?["is_playing"] as? Bool == true)
        }
    }

    @Test(arguments: EngineKind.allCases)
    func withTheSourceGoneTooPlaybackPauses(engine: EngineKind) async throws {
        // Time for the phone's loss to be handled before the deadline, on a busy machine too.
        try await Self.start(engine, confirmMs: 3_000) { server in
            let (phone, speaker, grant) = try await Self.transferredToTheSpeaker(server)
            await phone.drop()
            let rest = try await RESTTests().remote(server)
            #expect(try await eventually(timeout: .seconds(3)) {
                let devices = try await rest.json("GET", "/v1/me/player/devices").1["devices"] as? [[String: Any]]
                return devices?.first { $0["id"] as? String == "phone" }?["online"] as? Bool == false
            }, "the phone is offline before the deadline")
            guard case .leaseRevoked(let revoked) = try await speaker.expect("lease_revoked") else { return }
            #expect(revoked.reason == .transferFailed && revoked.by == nil && revoked.epoch == grant.epoch + 1)
            var state: PlayerState?
            while state?.epoch != revoked.epoch {
                guard case .state(let event) = try await speaker.expect("state") else { continue }
                state = event.state
            }
            #expect(state?.activeDevice == nil && state?.isPlaying == false)
        }
    }

    @Test(arguments: EngineKind.allCases)
    func aRESTTransferFollowsTheSameRule(engine: EngineKind) async throws {
        // Time for the second transfer's grant and confirmation to travel, on a busy machine too.
        try await Self.start(engine, confirmMs: 5_000) { server in
            let (phone, speaker) = try await Self.playingOnThePhone(server)
            let rest = try await RESTTests().remote(server)
            #expect(try await rest.call("PUT", "/v1/me/player", body: #"{"device_ids":["speaker"]}"#).status == 200)
            guard case .leaseGranted(let grant) = try await speaker.expect("lease_granted") else { return }
            #expect(grant.confirmBy != nil)
            guard case .leaseGranted(let back) = try await phone.expect("lease_granted") else { return }
            #expect(back.state.activeDevice == "phone")
            // A device without the capability is not asked: the phone keeps what it gets.
            #expect(try await rest.call("PUT", "/v1/me/player", body: #"{"device_ids":["speaker"]}"#).status == 200)
            guard case .leaseGranted(let again) = try await speaker.expect("lease_granted") else { return }
            try await speaker.send(.report(.init(epoch: again.epoch, positionMs: again.state.positionMs, isPlaying: true, trackID: "t0001")))
            try await speaker.command("t2", .transfer(device: "phone", play: nil))
            guard case .leaseGranted(let plain) = try await phone.expect("lease_granted") else { return }
            #expect(plain.confirmBy == nil)
        }
    }

    @Test(arguments: EngineKind.allCases)
    func deviceListsTellCapabilitiesAndRoundTrips(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine, { $0.heartbeatMs = 3_000 }) { server in
            let (phone, _) = try await server.device("phone")
            let (speaker, _) = try await server.device("speaker", kind: .speaker, capabilities: [Capability.transferConfirm, "hologram"])
            let (_, welcome) = try await server.device("laptop", kind: .computer)
            #expect(welcome.devices.first { $0.id == "speaker" }?.capabilities == [Capability.transferConfirm], "unknown ones are left out")
            #expect(welcome.devices.first { $0.id == "phone" }?.capabilities == nil)
            // Round trips reach the directory with the presence refresh (every few seconds). A
            // machine starved by the whole suite may drop a device (then offline, without rtt_ms).
            let rest = try await RESTTests().remote(server)
            var entries: [[String: Any]] = []
            var online: [[String: Any]] { entries.filter { $0["online"] as? Bool == true } }
            for _ in 0..<100 {
                entries = (try await rest.json("GET", "/v1/me/player/devices").1["devices"] as? [[String: Any]]) ?? []
                if !online.isEmpty, online.allSatisfy({ $0["rtt_ms"] is Int }) { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(entries.count == 3 && !online.isEmpty, "\(entries)")
            // A connection still open answered within two heartbeats (a busy machine took over a second).
            #expect(online.allSatisfy { ($0["rtt_ms"] as? Int).map { $0 >= 0 && $0 < 6_000 } ?? false }, "\(entries)")
            #expect(entries.filter { $0["online"] as? Bool == false }.allSatisfy { $0["rtt_ms"] == nil }, "\(entries)")
            _ = (phone, speaker)
        }
    }

    @Test(.enabled(if: FaultCluster.binaryExists, "needs .build/debug/playback-syncd"))
    func theDaemonRefusesAConfirmationTimeThatIsNotAPositiveNumber() throws {
        let zero = try runProgram(FaultCluster.binary, ["--port", "0", "--transfer-confirm-ms", "0"])
        #expect(zero.code != 0 && zero.output.contains("--transfer-confirm-ms must be positive"), "\(zero.output)")
        let words = try runProgram("/usr/bin/env", ["PLAYBACK_TRANSFER_CONFIRM_MS=soon", FaultCluster.binary, "--port", "0"])
        #expect(words.code != 0 && words.output.contains("PLAYBACK_TRANSFER_CONFIRM_MS=soon is not a valid number"), "\(words.output)")
    }
}
