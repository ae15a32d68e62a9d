import Foundation
import PlaybackCore
import Testing

@Suite("REST remote control")
struct RESTTests {
    /// Requests as `user`, with its token.
    struct Remote {
        let server: TestServer
        let token: String

        func call(_ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:]) async throws
            -> (status: Int, body: String, headers: [String: String])
        {
            try await server.httpResponse(
                path, method: method, headers: headers.merging(["Authorization": "Bearer \(token)"]) { a, _ in a }, body: body)
        }

        func json(_ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:]) async throws -> (Int, [String: Any]) {
            let response = try await call(method, path, body: body, headers: headers)
            let object = (try? JSONSerialization.jsonObject(with: Data(response.body.utf8))) as? [String: Any] ?? [:]
            return (response.status, object)
        }
    }

    func remote(_ server: TestServer, user: String = "alice") async throws -> Remote {
        Remote(server: server, token: try await server.token(user))
    }

    func errorCode(_ object: [String: Any]) -> String? { (object["error"] as? [String: Any])?["code"] as? String }

    @Test(arguments: EngineKind.allCases)
    func commandsAnswerWithTheVersionAndAreBroadcastToDevices(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let rest = try await remote(server)
            #expect(try await rest.call("GET", "/v1/me/player").status == 204, "no playback yet")
            let (speaker, _) = try await server.device("speaker", kind: .speaker)
            let play = try await rest.call("PUT", "/v1/me/player/play?device_id=speaker", body: #"{"context":{"kind":"album","id":"a02"},"position_ms":5000}"#)
            #expect(play.status == 200 && play.body == #"{"version":1}"# && play.headers["etag"] == "\"1\"")
            guard case .leaseGranted(let grant) = try await speaker.expect("lease_granted") else { return }
            #expect(grant.state.track?.id == "t0011" && grant.state.positionMs == 5_000)
            let event = try await speaker.state()
            #expect(event.cause == .init(op: "play", device: nil, request: nil))
            for (method, path) in [
                ("PUT", "/v1/me/player/pause"), ("POST", "/v1/me/player/next"), ("POST", "/v1/me/player/previous"),
                ("PUT", "/v1/me/player/seek?position_ms=1000"), ("PUT", "/v1/me/player/volume?volume_percent=40"),
                ("PUT", "/v1/me/player/repeat?state=context"), ("PUT", "/v1/me/player/shuffle?state=true"),
            ] {
                #expect(try await rest.call(method, path).status == 200, "\(method) \(path)")
            }
            let (status, player) = try await rest.json("GET", "/v1/me/player")
            let state = player["state"] as? [String: Any]
            #expect(status == 200 && state?["volume"] as? Int == 40 && state?["repeat"] as? String == "context" && state?["shuffle"] as? Bool == true)
            #expect((player["devices"] as? [[String: Any]])?.first?["id"] as? String == "speaker")
            let (_, queued) = try await rest.json("POST", "/v1/me/player/queue?track_id=t0042")
            #expect(queued["entry"] is String && queued["version"] as? Int == 9)
            let (_, queue) = try await rest.json("GET", "/v1/me/player/queue")
            #expect(((queue["queue"] as? [[String: Any]])?.first?["track"] as? [String: Any])?["id"] as? String == "t0042")
            #expect(queue["currently_playing"] is [String: Any])
            let (_, devices) = try await rest.json("GET", "/v1/me/player/devices")
            #expect((devices["devices"] as? [Any])?.count == 1)
        }
    }

    @Test(arguments: EngineKind.allCases)
    func aRESTTransferIsSeenByTheDevicesAsLeaseMessages(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let rest = try await remote(server)
            let (speaker, _) = try await server.device("speaker", kind: .speaker)
            let (phone, _) = try await server.device("phone")
            #expect(try await rest.call("PUT", "/v1/me/player/play?device_id=speaker", body: #"{"track_ids":["t0001","t0002"]}"#).status == 200)
            _ = try await speaker.expect("lease_granted")
            #expect(try await rest.call("PUT", "/v1/me/player", body: #"{"device_ids":["phone"],"play":true}"#).status == 200)
            guard case .leaseRevoked(let revoked) = try await speaker.expect("lease_revoked") else { return }
            #expect(revoked.reason == .transferred && revoked.by == "phone")
            guard case .leaseGranted(let granted) = try await phone.expect("lease_granted") else { return }
            #expect(granted.state.track?.id == "t0001" && granted.state.isPlaying)
        }
    }

    @Test func errorsHaveTheDocumentedStatusesAndBodies() async throws {
        try await TestServer.with { server in
            let rest = try await remote(server)
            let cases: [(String, String, String?, Int, String)] = [
                ("PUT", "/v1/me/player/play", #"{"track_ids":["t0001"]}"#, 404, "no_active_device"),
                ("PUT", "/v1/me/player/play?device_id=ghost", #"{"track_ids":["t0001"]}"#, 404, "device_not_found"),
                ("PUT", "/v1/me/player/volume?volume_percent=101", nil, 400, "bad_request"),
                ("PUT", "/v1/me/player/volume?volume_percent=loud", nil, 400, "bad_request"),
                ("PUT", "/v1/me/player/volume", nil, 400, "bad_request"),
                ("PUT", "/v1/me/player/repeat?state=sometimes", nil, 400, "bad_request"),
                ("PUT", "/v1/me/player/shuffle?state=maybe", nil, 400, "bad_request"),
                ("PUT", "/v1/me/player", #"{"device_ids":["a","b"]}"#, 400, "bad_request"),
                ("PUT", "/v1/me/player", "not json", 400, "bad_request"),
                ("POST", "/v1/me/player/queue?track_id=nope", nil, 404, "track_not_found"),
                ("POST", "/v1/me/player/next", nil, 400, "bad_request"),
                ("GET", "/v1/tracks?limit=51", nil, 400, "bad_request"),
            ]
            for (method, path, body, status, code) in cases {
                let (got, object) = try await rest.json(method, path, body: body)
                #expect(got == status && errorCode(object) == code, "\(method) \(path): \(got) \(object)")
                #expect((object["error"] as? [String: Any])?["status"] as? Int == status)
            }
            _ = try await server.device("radio", user: "dora")
            let token = try await server.token("dora", country: "DE")
            let licensed = try await server.httpResponse(
                "/v1/me/player/play?device_id=radio", method: "PUT", headers: ["Authorization": "Bearer \(token)"], body: #"{"track_ids":["t0013"]}"#)
            #expect(licensed.status == 451, "\(licensed.body)")
            #expect(try await server.http("/v1/me/player").status == 401)
            #expect(try await server.http("/v1/me/player", headers: ["Authorization": "Bearer nope"]).status == 401)
        }
    }

    @Test func ifMatchAndIdempotencyKey() async throws {
        try await TestServer.with { server in
            let rest = try await remote(server)
            #expect(try await rest.call("PUT", "/v1/me/player/volume?volume_percent=10", headers: ["If-Match": "0"]).status == 200)
            let conflict = try await rest.call("PUT", "/v1/me/player/volume?volume_percent=20", headers: ["If-Match": "\"0\""])
            #expect(conflict.status == 409 && conflict.body.contains("version_conflict") && conflict.headers["etag"] == "\"1\"")
            #expect(try await rest.call("PUT", "/v1/me/player/volume?volume_percent=20", headers: ["If-Match": "soon"]).status == 400)
            let first = try await rest.call("POST", "/v1/me/player/queue?track_id=t0002", headers: ["Idempotency-Key": "k-1"])
            let again = try await rest.call("POST", "/v1/me/player/queue?track_id=t0002", headers: ["Idempotency-Key": "k-1"])
            #expect(first.status == 200 && first.body == again.body)
            let (_, queue) = try await rest.json("GET", "/v1/me/player/queue")
            #expect((queue["queue"] as? [Any])?.count == 1, "applied once")
        }
    }

    @Test func tooManyRequestsGet429WithRetryAfter() async throws {
        try await TestServer.with({
            $0.messagesPerSecond = 2
            $0.messageBurst = 2
        }) { server in
            let rest = try await remote(server)
            var limited: (status: Int, body: String, headers: [String: String])?
            for _ in 0..<6 {
                let response = try await rest.call("GET", "/v1/me/player/devices")
                if response.status == 429 { limited = response }
            }
            #expect(limited?.body.contains("rate_limited") == true)
            #expect(Int(limited?.headers["retry-after"] ?? "") ?? 0 >= 1)
        }
    }

    @Test func trackSearch() async throws {
        try await TestServer.with { server in
            let rest = try await remote(server)
            let (status, found) = try await rest.json("GET", "/v1/tracks?q=t004&limit=3")
            let ids = (found["tracks"] as? [[String: Any]])?.compactMap { $0["id"] as? String }
            #expect(status == 200 && ids == ["t0040", "t0041", "t0042"])
            let (_, all) = try await rest.json("GET", "/v1/tracks")
            #expect((all["tracks"] as? [Any])?.count == 20, "limit defaults to 20")
        }
    }
}
