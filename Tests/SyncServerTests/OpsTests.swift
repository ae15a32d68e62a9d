import Foundation
import PlaybackCore
import Testing

@Suite("ops endpoints and shutdown")
struct OpsTests {
    @Test func healthReadinessAndMetrics() async throws {
        try await TestServer.with { server in
            let health = try await server.http("/healthz")
            #expect(health.status == 200 && health.body == "ok\n")
            #expect(try await server.http("/readyz").status == 200)
            let (phone, _) = try await server.device("phone")
            try await phone.command("m", .volume(percent: 1))
            let metrics = try await server.http("/metrics")
            #expect(metrics.status == 200)
            #expect(metrics.body.contains("playback_ws_connections"))
            #expect(metrics.body.contains(#"playback_commands_total{op="volume",result="ok"}"#))
            #expect(metrics.body.contains("playback_command_duration_seconds"))
        }
    }

    @Test func theDiagnosticsEchoIsOffUnlessEnabled() async throws {
        try await TestServer.with { server in
            let status = try await server.http("/v1/diagnostics/echo").status
            #expect(status == 404, "off by default")
        }
        try await TestServer.with({ $0.diagnosticsEcho = true }) { server in
            let echo = try await TestClient.connect(port: server.port, token: nil, path: "/v1/diagnostics/echo")
            try await echo.sendText("héllo, not JSON")
            guard case .undecodable(let text)? = await echo.next() else { Issue.record("no echo"); return }
            #expect(text == "héllo, not JSON")
            try await echo.sendFrame(opcode: 0x1, payload: [0xC0, 0xAF])
            #expect(await echo.expectClose() == 1007, "same UTF-8 validation as /v1/connect")
        }
    }

    @Test func theWebRemoteIsServedAndDevTokensOnlyWithTheDevelopmentSecret() async throws {
        try await TestServer.with { server in
            let page = try await server.httpResponse("/")
            #expect(page.status == 200 && page.headers["content-type"]?.hasPrefix("text/html") == true && page.body.contains("/app.js"))
            #expect(try await server.http("/app.js").body.contains("lease_granted"))
            let minted = try await server.http("/v1/dev/token", method: "POST", body: #"{"user":"web.\#(server.namespace)"}"#)
            #expect(minted.status == 200)
            let token = (try JSONSerialization.jsonObject(with: Data(minted.body.utf8)) as? [String: Any])?["token"] as? String
            let client = try await TestClient.connect(port: server.port, token: token, useQuery: true)
            #expect(try await client.hello("web-page", kind: .web).state.version == 0, "the minted token opens a session")
            #expect(try await server.http("/v1/dev/token", method: "POST", body: #"{"user":"no spaces"}"#).status == 400)
        }
        try await TestServer.with({ $0.jwtSecret = String(repeating: "s", count: 40) }) { server in
            let refused = try await server.http("/v1/dev/token", method: "POST", body: #"{"user":"mallory"}"#)
            let dev = try await server.http("/v1/dev")
            let page = try await server.http("/")
            #expect(refused.status == 404)
            #expect(dev.body == #"{"development_tokens":false}"#)
            #expect(page.status == 200, "the page itself is still there, for pasted tokens")
        }
    }

    @Test func shutdownClosesSessionsWith1001() async throws {
        let server = try await TestServer.start()
        let (phone, _) = try await server.device("phone")
        let stopping = Task { await server.stop() }
        #expect(await phone.expectClose() == 1001)
        await stopping.value
    }
}
