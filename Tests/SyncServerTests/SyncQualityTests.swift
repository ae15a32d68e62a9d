import Foundation
import PlaybackCore
import Testing

/// Sync quality in `/metrics`: how far the holder's reports are from the server's extrapolation.
@Suite("sync quality")
struct SyncQualityTests {
    @Test(arguments: EngineKind.allCases)
    func theHoldersReportsAreMeasuredAgainstTheExtrapolation(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine, recordingLogs: true) { server in
            let (phone, _) = try await server.device("phone")
            try await phone.command("p", .play(.init(trackID: "t0001", device: "phone")))
            guard case .leaseGranted(let grant) = try await phone.expect("lease_granted") else { return }
            // 30 s ahead of where the server has the track.
            try await phone.send(.report(.init(id: "r1", epoch: grant.epoch, positionMs: 30_000, isPlaying: true, trackID: "t0001")))
            _ = try await phone.state { $0.positionMs >= 30_000 }
            // This server's own account (the metric it feeds, playback_report_drift_seconds, is shared by every test).
            let drifts = server.logs.entries("report drift", where: ["device.id": "phone"]).compactMap { $0.metadata["report.drift_ms"].flatMap { Int($0) } }
            #expect(drifts.count == 1, "one report, one measurement: \(drifts)")
            #expect(drifts.contains { (29_000...31_000).contains($0) }, "a drift of about 30 s was measured: \(drifts)")
        }
    }
}
