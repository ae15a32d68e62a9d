import Foundation
import PlaybackCore
import SyncServer
import Testing

@Suite("upgrade authentication")
struct AuthTests {
    func refusal(_ attempt: () async throws -> TestClient) async -> HandshakeRefused? {
        do {
            _ = try await attempt()
            return nil
        } catch let refused as HandshakeRefused {
            return refused
        } catch {
            return HandshakeRefused(status: -1, body: "\(error)")
        }
    }

    @Test func validTokensUpgradeByHeaderOrQuery() async throws {
        try await TestServer.with { server in
            let token = try await server.token("alice")
            let byHeader = try await TestClient.connect(port: server.port, token: token)
            #expect(try await byHeader.hello("phone").state.version == 0)
            let byQuery = try await TestClient.connect(port: server.port, token: token, useQuery: true)
            #expect(try await byQuery.hello("laptop").devices.count == 2)
        }
    }

    @Test func missingMalformedBadlySignedOrExpiredTokensGet401() async throws {
        try await TestServer.with { server in
            let wrongKey = try await server.token("alice", secret: String(repeating: "x", count: 40))
            let expired = try await server.token("alice", ttl: -60)
            let badSubject = try await server.token("alice smith")
            for token in [nil, "not-a-jwt", "a.b.c", wrongKey, expired, badSubject] as [String?] {
                let refused = await refusal { try await TestClient.connect(port: server.port, token: token) }
                #expect(refused?.status == 401, "token \(token ?? "none")")
                #expect(refused?.body.contains(#""status":401"#) == true)
            }
        }
    }

    @Test func foreignOriginGets403WhenAnAllowListIsSet() async throws {
        try await TestServer.with({ $0.allowedOrigins = ["https://remote.example"] }) { server in
            let token = try await server.token("alice")
            let foreign = await refusal { try await TestClient.connect(port: server.port, token: token, origin: "https://evil.example") }
            #expect(foreign?.status == 403)
            let allowed = try await TestClient.connect(port: server.port, token: token, origin: "https://remote.example")
            _ = try await allowed.hello("web")
            let native = try await TestClient.connect(port: server.port, token: token)
            _ = try await native.hello("phone")
        }
    }

    @Test func plainGETOfTheEndpointAsksForAnUpgrade() async throws {
        try await TestServer.with { server in
            let token = try await server.token("alice")
            let response = try await server.http("/v1/connect", headers: ["Authorization": "Bearer \(token)"])
            #expect(response.status == 426)
            #expect(try await server.http("/v1/connect").status == 401)
        }
    }

    @Test func shortSecretsAreRefusedAtStart() async {
        await #expect(throws: ConfigurationError.self) {
            try await TestServer.with({ $0.jwtSecret = "short" }) { _ in }
        }
    }

    @Test func tokenRefreshKeepsTheSessionAndAnotherUsersTokenClosesIt() async throws {
        try await TestServer.with { server in
            let (phone, _) = try await server.device("phone")
            try await phone.send(.auth(token: try await server.token("alice", ttl: 7_200), id: "a1"))
            guard case .ack(let ack) = try await phone.nextMessage() else { Issue.record("no ack"); return }
            #expect(ack.id == "a1")
            try await phone.send(.auth(token: try await server.token("mallory"), id: "a2"))
            #expect(await phone.expectClose() == 1008)
        }
    }

    @Test func aSessionWhoseTokenExpiresIsClosedWith1008() async throws {
        try await TestServer.with { server in
            let client = try await server.connect(ttl: 5)
            _ = try await client.hello("phone")
            #expect(await client.expectClose(timeout: .seconds(15)) == 1008)
        }
    }
}
