import Foundation
import PlaybackCore
import Testing

/// The original system design's REST shape (`/api/playback/*`): the same commands, versions,
/// idempotency and errors as `/v1/me/player`, positions in seconds.
@Suite("the seed's REST shape")
struct SeedRESTTests {
    let rest = RESTTests()

    @Test(arguments: EngineKind.allCases)
    func playPauseSeekTransferAndCurrentMapOntoTheCommands(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let remote = try await rest.remote(server)
            let (speaker, _) = try await server.device("speaker", kind: .speaker)
            let (phone, _) = try await server.device("phone")
            let (status, played) = try await remote.json(
                "POST", "/api/playback/play", body: #"{"song_id":"t0042","device_id":"speaker","context":"album:a05","position":12.5}"#)
            #expect(status == 200 && played["version"] as? Int == 1 && played["current_position"] as? Double == 12.5, "\(played)")
            #expect(played.keys.contains("manifest_url") && played["manifest_url"] is NSNull, "no stream manifest: \(played)")
            #expect((played["audio"] as? String)?.contains("does not serve audio") == true)
            guard case .leaseGranted(let grant) = try await speaker.expect("lease_granted") else { return }
            #expect(grant.state.track?.id == "t0042" && grant.state.positionMs == 12_500 && grant.state.context?.kind == "album")

            let (_, current) = try await remote.json("GET", "/api/playback/current")
            #expect((current["song"] as? [String: Any])?["id"] as? String == "t0042")
            #expect(((current["song"] as? [String: Any])?["duration"] as? Double ?? 0) > 0, "duration in seconds")
            #expect((current["position"] as? Double ?? 0) >= 12.5 && current["is_playing"] as? Bool == true)
            #expect((current["device"] as? [String: Any])?["id"] as? String == "speaker")
            #expect((current["device"] as? [String: Any])?["type"] as? String == "speaker")
            #expect(current["queue"] is [Any] && current["version"] as? Int == 1)

            let (_, paused) = try await remote.json("POST", "/api/playback/pause", body: #"{"device_id":"speaker","position":13}"#)
            #expect(paused["success"] as? Bool == true && paused["version"] as? Int == 2)
            #expect(try await phone.state { !$0.isPlaying }.cause.op == "pause")

            let (_, sought) = try await remote.json("POST", "/api/playback/seek", body: #"{"song_id":"t0042","position":120}"#)
            #expect(sought["version"] as? Int == 3 && sought["position"] as? Double == 120)
            let (conflict, wrongSong) = try await remote.json("POST", "/api/playback/seek", body: #"{"song_id":"t0001","position":5}"#)
            #expect(conflict == 409 && rest.errorCode(wrongSong) == "version_conflict", "a seek in another song is refused")

            let moved = try await remote.call("POST", "/api/playback/transfer", body: #"{"device":"phone"}"#)
            #expect(moved.status == 200)
            guard case .leaseGranted(let granted) = try await phone.expect("lease_granted") else { return }
            #expect(granted.state.positionMs == 120_000, "the transfer keeps the position")

            // Idempotency-Key: a repeat is answered from the log, not applied twice.
            let headers = ["Idempotency-Key": "seed-seek-1"]
            let first = try await remote.json("POST", "/api/playback/seek", body: #"{"position":30}"#, headers: headers)
            let again = try await remote.json("POST", "/api/playback/seek", body: #"{"position":30}"#, headers: headers)
            #expect(first.1["version"] as? Int == again.1["version"] as? Int)
        }
    }

    @Test(arguments: EngineKind.allCases)
    func reportsCountOnlyFromTheActiveDevice(engine: EngineKind) async throws {
        try await TestServer.with(engine: engine) { server in
            let remote = try await rest.remote(server)
            let (speaker, _) = try await server.device("speaker", kind: .speaker)
            _ = try await server.device("phone")
            #expect(try await remote.call("POST", "/api/playback/play", body: #"{"song_id":"t0042","device_id":"speaker"}"#).status == 200)
            _ = try await speaker.expect("lease_granted")
            let before = try await remote.json("GET", "/api/playback/current").1

            let (refused, stale) = try await remote.json("POST", "/api/playback/update", body: #"{"device_id":"phone","position":90}"#)
            #expect(refused == 409 && rest.errorCode(stale) == "stale_epoch", "from another device: \(stale)")
            let after = try await remote.json("GET", "/api/playback/current").1
            #expect(after["version"] as? Int == before["version"] as? Int, "never applied")
            #expect((after["position"] as? Double ?? 99) < 60)

            let (accepted, done) = try await remote.json(
                "POST", "/api/playback/report", body: #"{"device_id":"speaker","song_id":"t0042","position":45}"#)
            #expect(accepted == 200 && done["success"] as? Bool == true, "\(done)")
            let now = try await remote.json("GET", "/api/playback/current").1
            #expect((now["position"] as? Double ?? 0) >= 45, "the active device's report moved the position: \(now)")

            let (bad, invalid) = try await remote.json("POST", "/api/playback/report", body: #"{"device_id":"speaker","position":-3}"#)
            #expect(bad == 400 && rest.errorCode(invalid) == "bad_request")
            let (badContext, context) = try await remote.json("POST", "/api/playback/play", body: #"{"context":"nocolon"}"#)
            #expect(badContext == 400 && rest.errorCode(context) == "bad_request")
        }
    }
}
