import Foundation
import PlaybackCore
import Testing

/// Each device keeps its own volume, on both engines: device lists carry it, a transfer adopts it.
@Suite("volume per device")
struct DeviceVolumeTests {
    @Test(arguments: EngineKind.allCases)
    func aTransferPlaysAtTheTargetsOwnVolume(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let (phone, _) = try await server.device("phone")
            let (speaker, _) = try await server.device("speaker", kind: .speaker)
            try await phone.command("p", .play(.init(trackID: "t0001", device: "phone")))
            _ = try await phone.expect("lease_granted")
            try await phone.command("v1", .volume(percent: 30))
            try await phone.command("v2", .volume(percent: 75, device: "speaker"))
            // The device list tells every device each one's volume.
            var listed: [DeviceInfo] = []
            while listed.first(where: { $0.id == "speaker" })?.volumePercent != 75 {
                guard case .devices(let devices) = try await speaker.expect("devices") else { continue }
                listed = devices
            }
            #expect(listed.first { $0.id == "phone" }?.volumePercent == 30)
            let rest = RESTTests()
            let remote = try await rest.remote(server)
            let (_, player) = try await remote.json("GET", "/v1/me/player")
            #expect((player["state"] as? [String: Any])?["volume"] as? Int == 30, "the phone plays at 30; the speaker's 75 waits for it")

            try await phone.command("t", .transfer(device: "speaker", play: nil))
            guard case .leaseGranted(let grant) = try await speaker.expect("lease_granted") else { return }
            #expect(grant.state.volume == 75, "no jump to the phone's volume")
            try await speaker.command("t2", .transfer(device: "phone", play: nil))
            guard case .leaseGranted(let back) = try await phone.expect("lease_granted") else { return }
            #expect(back.state.volume == 30)

            let (_, devices) = try await remote.json("GET", "/v1/me/player/devices")
            let entries = devices["devices"] as? [[String: Any]] ?? []
            #expect(entries.first { $0["id"] as? String == "speaker" }?["volume_percent"] as? Int == 75, "\(entries)")
            let (status, _) = try await remote.json("PUT", "/v1/me/player/volume?volume_percent=10&device_id=speaker")
            #expect(status == 200)
            let (missing, error) = try await remote.json("PUT", "/v1/me/player/volume?volume_percent=10&device_id=toaster")
            #expect(missing == 404 && rest.errorCode(error) == "device_not_found")
        }
    }
}
