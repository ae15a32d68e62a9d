import Foundation
import PlaybackCore
import Testing

/// Sync quality in `/metrics`: how far the holder's reports are from the server's extrapolation.
@Suite("sync quality")
struct SyncQualityTests {
    @Test(arguments: EngineKind.allCases)
    func theHoldersReportsAreMeasuredAgainstTheExtrapolation(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let (phone, _) = try await server.device("phone")
            try await phone.command("p", .play(.init(trackID: "t0001", device: "phone")))
            guard case .leaseGranted(let grant) = try await phone.expect("lease_granted") else { return }
            let count = "playback_report_drift_seconds_count"
            let sum = "playback_report_drift_seconds_sum"
            let (countBefore, sumBefore) = (TestMetrics.value(count), TestMetrics.value(sum))
            // 30 s ahead of where the server has the track.
            try await phone.send(.report(.init(id: "r1", epoch: grant.epoch, positionMs: 30_000, isPlaying: true, trackID: "t0001")))
            _ = try await phone.state { $0.positionMs >= 30_000 }
            #expect(TestMetrics.value(count) >= countBefore + 1)
            #expect(TestMetrics.value(sum) >= sumBefore + 29, "a drift of about 30 s was recorded")
        }
    }
}
