import Foundation
import PlaybackCore
import Testing

/// Overload: while this node's reading of the bus lags, new commands are refused with a retry
/// hint instead of acknowledged while the devices fall behind.
@Suite("overload", .enabled(if: FaultCluster.binaryExists, "needs redis-server"))
struct OverloadTests {
    @Test func commandsAreShedWhileTheBusLagsAndAcceptedOnceItCatchesUp() async throws {
        // A redis-server of the test's own: it is paused below.
        let redis = try await offloaded { try RedisProcess() }
        let server = try await TestServer.start(engine: .redis, redisURL: redis.url) { $0.engine.maxBusLagMs = 200 }
        do {
            // (The loaded suite may already lag past the bound: the device comes back when told,
            // and the play waits its turn.)
            let phone = try await Self.deviceOnceTakenOn(server, "phone")
            _ = try await phone.ackedOnceAvailable("p", .play(.init(trackID: "t0001", device: "phone")))
            // Redis answers no client for 2 s: the subscription's probe goes unanswered, its lag grows.
            let paused = try runProgram("/usr/bin/redis-cli", ["-p", String(redis.port), "CLIENT", "PAUSE", "2000", "ALL"])
            #expect(paused.code == 0, "\(paused.output)")
            try await Task.sleep(for: .milliseconds(600))
            let shed = try await phone.refused("shed", .volume(percent: 10))
            #expect(shed.code == .unavailable && (shed.retryAfterMs ?? 0) > 0, "\(shed)")
            // A device arriving now is told to come back later (1013 with a hint), not taken on.
            let newcomer = try await server.connect()
            try await newcomer.send(.hello(.init(device: .init(id: "laptop", name: "Laptop", kind: .computer))))
            var refusal: (code: UInt16?, reason: String)?
            while refusal == nil, let event = await newcomer.next(timeout: .seconds(5)) {
                if case .close(let code, let reason) = event { refusal = (code, reason) }
                if case .disconnected = event { break }
            }
            #expect(refusal?.code == CloseCode.tryAgainLater.rawValue, "\(String(describing: refusal))")
            #expect((Reconnecting.retryAfterMs(inCloseReason: refusal?.reason ?? "") ?? 0) > 0, "\(String(describing: refusal))")
            // Once Redis answers again the lag falls and the same id is accepted (refusals are not remembered).
            let (ack, _) = try await phone.ackedOnceAvailable("shed", .volume(percent: 10))
            let state = try await phone.state { $0.version == ack.version }
            #expect(state.state.volume == 10, "the device got the change it was acked for")
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    /// A device that connects again after a 1013 (overloaded) as a client does, after the hint.
    static func deviceOnceTakenOn(_ server: TestServer, _ id: String) async throws -> TestClient {
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            do {
                return try await server.device(id).0
            } catch where ContinuousClock.now < deadline && "\(error)".contains("1013") {
                try await Task.sleep(for: .milliseconds(500))
            }
        }
    }
}
