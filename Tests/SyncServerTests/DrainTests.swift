import Foundation
import PlaybackCore
import SyncServer
import Testing

/// A server that stops gracefully tells each device when to come back, spread over its window.
@Suite("draining")
struct DrainTests {
    @Test func aStoppingServerSpreadsItsDevicesReconnectsOverTheDrainWindow() async throws {
        let server = try await TestServer.start {
            $0.engine.graceMs = 10_000
            $0.drainWindowMs = 4_000
        }
        var clients: [TestClient] = []
        for index in 0..<40 { clients.append(try await server.device("d\(index)", user: "u\(index % 10)").0) }
        await server.stop()
        var hints: [Int64] = []
        for client in clients {
            while let event = await client.next(timeout: .seconds(5)) {
                if case .close(let code, let reason) = event {
                    #expect(code == CloseCode.goingAway.rawValue, "\(String(describing: code)) \(reason)")
                    if let hint = Reconnecting.retryAfterMs(inCloseReason: reason) { hints.append(hint) }
                    break
                }
                if case .disconnected = event { break }
            }
        }
        #expect(hints.count == clients.count, "every device was told when to come back: \(hints.count) of \(clients.count)")
        #expect(hints.allSatisfy { (0...4_000).contains($0) }, "\(hints)")
        #expect(Set(hints).count >= 30 && (hints.max() ?? 0) - (hints.min() ?? 0) >= 2_000, "spread over the window: \(hints.sorted())")
    }

    @Test func theWindowIsAtMostHalfTheGraceSoThatAHolderBackAtItsEndKeepsItsLease() {
        var configuration = ServerConfiguration()
        configuration.engine.graceMs = 3_000
        configuration.drainWindowMs = 5_000
        #expect(configuration.effectiveDrainWindowMs == 1_500)
        configuration.engine.graceMs = 20_000
        #expect(configuration.effectiveDrainWindowMs == 5_000)
    }
}
