import Foundation
import Hummingbird
import JWTKit
import NIOCore
import ServiceLifecycle
import SyncServer
import Synchronization
import Testing

/// Tokens from an identity provider: its keys come from a JWKS this test serves itself.
@Suite("identity-provider tokens (JWKS)")
struct JWKSTests {
    @Test func rs256ES256AndEdDSATokensAreVerifiedWithTheKeyTheirKidNames() async throws {
        let rsa = try await SigningKey.rsa("rsa-1")
        let ec = try await SigningKey.ec("ec-1")
        let ed = try await SigningKey.ed("ed-1")
        try await KeySetServer.with([rsa, ec, ed]) { issuer in
            try await TestServer.with({ issuer.configure(&$0) }) { server in
                for key in [rsa, ec, ed] {
                    let token = try await key.sign(IdPClaims(sub: "alice-\(key.kid)"))
                    let response = try await server.http("/v1/me/player/devices", headers: ["Authorization": "Bearer \(token)"])
                    #expect(response.status == 200, "\(key.kid): \(response.body)")
                }
                // The WebSocket takes the same tokens.
                let client = try await TestClient.connect(port: server.port, token: try await ec.sign(IdPClaims(sub: "alice")))
                #expect(try await client.hello("phone").devices.count == 1)
                // A token signed by a key the issuer does not publish, under a published kid.
                let forged = try await SigningKey.rsa("rsa-1")
                let refused = try await server.http("/v1/me/player/devices", headers: ["Authorization": "Bearer \(try await forged.sign(IdPClaims(sub: "alice")))"])
                #expect(refused.status == 401)
                #expect(refused.body.contains("signature"), "\(refused.body)")
            }
        }
    }

    @Test func rotationAddsTheNewKeyOnFirstSightAndRefusesTheOldOneOnceRemoved() async throws {
        let old = try await SigningKey.ec("2026-11")
        let new = try await SigningKey.ec("2026-12")
        try await KeySetServer.with([old]) { issuer in
            try await TestServer.with({
                issuer.configure(&$0)
                $0.jwksSettings.minimumRefreshInterval = .milliseconds(200)
                $0.jwksSettings.maximumAge = .seconds(1)
            }) { server in
                let oldToken = try await old.sign(IdPClaims(sub: "alice"))
                let newToken = try await new.sign(IdPClaims(sub: "alice"))
                #expect(try await server.status(oldToken) == 200)
                // Not published yet: refused after one fetch, with the reason.
                let early = try await server.http("/v1/me/player/devices", headers: ["Authorization": "Bearer \(newToken)"])
                #expect(early.status == 401)
                #expect(early.body.contains("not among the issuer's keys"), "\(early.body)")

                // Both keys overlap: the new kid makes the daemon fetch again, at once.
                issuer.publish([old, new])
                try await Task.sleep(for: .milliseconds(250))
                #expect(try await server.status(newToken) == 200)
                #expect(try await server.status(oldToken) == 200)

                // The old key is withdrawn: once the keys are older than their maximum age they
                // are fetched again, and the old key's tokens are refused.
                issuer.publish([new])
                let deadline = ContinuousClock.now + .seconds(10)
                var status = 200
                while status == 200, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(200))
                    status = try await server.status(oldToken)
                }
                #expect(status == 401, "the withdrawn key still verified tokens")
                #expect(try await server.status(newToken) == 200)
            }
        }
    }

    @Test func unknownKidsFetchAtMostOncePerInterval() async throws {
        let key = try await SigningKey.ec("k")
        try await KeySetServer.with([key]) { issuer in
            try await TestServer.with({
                issuer.configure(&$0)
                $0.jwksSettings.minimumRefreshInterval = .seconds(30)
            }) { server in
                let before = issuer.fetches
                for index in 0..<20 {
                    let stranger = try await SigningKey.ec("stranger-\(index)")
                    #expect(try await server.status(try await stranger.sign(IdPClaims(sub: "alice"))) == 401)
                }
                #expect(issuer.fetches - before <= 1, "\(issuer.fetches - before) fetches for 20 unknown kids")
            }
        }
    }

    @Test func issuerAudienceClaimNamesAndLeewayAreHonoured() async throws {
        let key = try await SigningKey.rsa("k")
        try await KeySetServer.with([key]) { issuer in
            try await TestServer.with({
                issuer.configure(&$0)
                $0.tokenRules.issuer = "https://id.example/realms/music"
                $0.tokenRules.audience = "playback"
                $0.tokenRules.userClaim = "preferred_username"
                $0.tokenRules.countryClaim = "https://music.example/country"
                $0.tokenRules.leewaySeconds = 30
            }) { server in
                var claims = IdPClaims(sub: "0b5e…uuid")
                claims.iss = "https://id.example/realms/music"
                claims.aud = ["account", "playback"]
                claims.preferred_username = "alice"
                claims.country = "SE"
                // Expired 10 s ago: within the 30 s of leeway.
                claims.exp = Date().timeIntervalSince1970 - 10
                let token = try await key.sign(claims)
                let accepted = try await server.http("/v1/me/player/devices", headers: ["Authorization": "Bearer \(token)"])
                #expect(accepted.status == 200, "\(accepted.body)")

                var wrongIssuer = claims
                wrongIssuer.iss = "https://evil.example"
                var wrongAudience = claims
                wrongAudience.aud = ["account"]
                var noUser = claims
                noUser.preferred_username = nil
                var longExpired = claims
                longExpired.exp = Date().timeIntervalSince1970 - 60
                var notYet = claims
                notYet.nbf = Date().timeIntervalSince1970 + 120
                for (claims, reason) in [
                    (wrongIssuer, "another issuer"), (wrongAudience, "another audience"), (noUser, "no preferred_username claim"),
                    (longExpired, "expired"), (notYet, "not valid yet"),
                ] {
                    let response = try await server.http("/v1/me/player/devices", headers: ["Authorization": "Bearer \(try await key.sign(claims))"])
                    #expect(response.status == 401, "\(reason)")
                    #expect(response.body.contains(reason), "\(response.body)")
                }
            }
        }
    }

    @Test func hostileTokensAreRefusedWithTheirReason() async throws {
        let key = try await SigningKey.rsa("k")
        try await KeySetServer.with([key]) { issuer in
            try await TestServer.with({ issuer.configure(&$0) }) { server in
                let claims = IdPClaims(sub: "alice")
                let payload = try JSONEncoder().encode(claims).base64URL
                let none = Data(#"{"alg":"none","typ":"JWT"}"#.utf8).base64URL + "." + payload + "."
                // Algorithm confusion: HS256 "signed" with the issuer's public key.
                let confusion = JWTKeyCollection()
                await confusion.add(hmac: HMACKey(from: key.publicPEM), digestAlgorithm: .sha256, kid: "k")
                let confused = try await confusion.sign(claims, kid: "k")
                // The development secret is not accepted beside a JWKS.
                let development = try await server.token("alice")
                let longKid = try await SigningKey.rsa(String(repeating: "k", count: 10_000)).sign(claims)
                let critical = Data(#"{"alg":"RS256","kid":"k","crit":["exp2"]}"#.utf8).base64URL + "." + payload + ".AAAA"
                let overlongKid = try await SigningKey.ec(String(repeating: "k", count: 300)).sign(claims)
                let noKid = Data(#"{"alg":"RS256"}"#.utf8).base64URL + "." + payload + ".AAAA"
                for (token, reason) in [
                    (none, "algorithm"), (confused, "algorithm"), (development, "algorithm"), (longKid, "header is larger than 4 KB"), (overlongKid, "not among the issuer's keys"),
                    (critical, "algorithm"), (noKid, "names no signing key"),
                ] {
                    let response = try await server.http("/v1/me/player/devices", headers: ["Authorization": "Bearer \(token)"])
                    #expect(response.status == 401, "\(reason): \(response.body)")
                    #expect(response.body.contains(reason), "\(response.body)")
                }
                #expect(try await server.status(try await key.sign(claims)) == 200)
            }
        }
    }

    @Test func anExplicitSecretKeepsHS256BesideTheJWKSButNeverWithThePublicKey() async throws {
        let key = try await SigningKey.rsa("k")
        let secret = String(repeating: "s", count: 40)
        try await KeySetServer.with([key]) { issuer in
            try await TestServer.with({
                issuer.configure(&$0)
                $0.jwtSecret = secret
            }) { server in
                #expect(try await server.status(try await server.token("alice", secret: secret)) == 200)
                let confusion = JWTKeyCollection()
                await confusion.add(hmac: HMACKey(from: key.publicPEM), digestAlgorithm: .sha256, kid: "k")
                let confused = try await confusion.sign(IdPClaims(sub: "alice"), kid: "k")
                let response = try await server.http("/v1/me/player/devices", headers: ["Authorization": "Bearer \(confused)"])
                #expect(response.status == 401)
                #expect(response.body.contains("signature"), "\(response.body)")
            }
        }
    }

    @Test func aBrokenOrWeakKeySetOrAHangingIssuerLeavesTheKeysThatServed() async throws {
        let key = try await SigningKey.ec("k")
        let next = try await SigningKey.ec("next")
        try await KeySetServer.with([key]) { issuer in
            try await TestServer.with({
                issuer.configure(&$0)
                $0.jwksSettings.minimumRefreshInterval = .milliseconds(100)
                // Enough for a fetch on loopback while the suites load both cores; the hang below
                // is bounded by it.
                $0.jwksSettings.fetchTimeout = .seconds(2)
            }) { server in
                let token = try await key.sign(IdPClaims(sub: "alice"))
                let nextToken = try await next.sign(IdPClaims(sub: "alice"))
                let first = try await server.http("/v1/me/player/devices", headers: ["Authorization": "Bearer \(token)"])
                #expect(first.status == 200, "\(first)")
                let weak = #"{"kty":"RSA","kid":"next","use":"sig","alg":"RS256","e":"AQAB","n":"\#(Data((0..<128).map { $0 == 0 ? 0xC1 : UInt8.random(in: 0...255) }).base64URL)"}"#
                let privateKey = #"{"kty":"EC","kid":"next","crv":"P-256","x":"\#(next.jwk["x"] ?? "")","y":"\#(next.jwk["y"] ?? "")","d":"AAAA"}"#
                let symmetric = #"{"kty":"oct","kid":"next","k":"c2VjcmV0"}"#
                for (document, what) in [
                    ("<html>login</html>", "not JSON"), (#"{"keys":[\#(weak)]}"#, "a 1024-bit RSA key"),
                    (#"{"keys":[\#(privateKey)]}"#, "a private key"), (#"{"keys":[\#(symmetric)]}"#, "a symmetric key"),
                    (#"{"keys":[]}"#, "no key"),
                ] {
                    issuer.serve(raw: document)
                    try await Task.sleep(for: .milliseconds(150))
                    let fetchesBefore = issuer.fetches
                    // The unknown kid makes the daemon fetch; the set is refused, the old key serves.
                    #expect(try await server.status(nextToken) == 401, "\(what)")
                    #expect(issuer.fetches > fetchesBefore, "\(what): the unknown kid made the daemon fetch")
                    #expect(try await server.status(token) == 200, "\(what): the key that served was dropped")
                }
                // The issuer hangs: the fetch times out, the known key serves meanwhile.
                issuer.hangs = true
                try await Task.sleep(for: .milliseconds(150))
                let started = ContinuousClock.now
                #expect(try await server.status(nextToken) == 401)
                #expect(started.duration(to: .now) < .seconds(5), "an unknown kid waited \(started.duration(to: .now)) for a hanging issuer")
                #expect(try await server.status(token) == 200)
                issuer.hangs = false
                #expect(TestMetrics.value(#"playback_jwks_refreshes_total{outcome="failed"}"#) >= 6)
            }
        }
    }

    @Test func anIssuerDownAtStartIsRetriedAndItsTokensGet503Meanwhile() async throws {
        let key = try await SigningKey.ec("k")
        try await KeySetServer.with([key]) { issuer in
            issuer.serve(raw: "", status: 502)
            try await TestServer.with({
                issuer.configure(&$0)
                $0.jwksSettings.minimumRefreshInterval = .milliseconds(100)
            }) { server in
                let token = try await key.sign(IdPClaims(sub: "alice"))
                let response = try await server.httpResponse("/v1/me/player/devices", headers: ["Authorization": "Bearer \(token)"])
                #expect(response.status == 503, "\(response.body)")
                #expect(response.headers["retry-after"] != nil)
                issuer.publish([key])
                try await Task.sleep(for: .milliseconds(150))
                #expect(try await server.status(token) == 200)
            }
        }
    }

    @Test func aKeyFileThatCannotBeUsedStopsTheStart() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("jwks-\(UInt32.random(in: 0...UInt32.max)).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(#"{"keys":[{"kty":"RSA","kid":"k","n":"AQAB","e":"AQAB"}]}"#.utf8).write(to: URL(fileURLWithPath: path))
        await #expect(throws: ConfigurationError.self) {
            try await TestServer.with({ $0.jwks = .file(path) }) { _ in }
        }
        // A good file works the same as a URL.
        let key = try await SigningKey.ed("k")
        try Data(KeySetServer.document([key]).utf8).write(to: URL(fileURLWithPath: path))
        let token = try await key.sign(IdPClaims(sub: "alice"))
        let status = try await TestServer.with({ $0.jwks = .file(path) }) { server in try await server.status(token) }
        #expect(status == 200)
    }

    @Test func onlyHTTPSOrThisMachineIsAJWKSURL() throws {
        #expect(try IssuerKeys.Source("https://id.example/realms/music/protocol/openid-connect/certs") == .url("https://id.example/realms/music/protocol/openid-connect/certs"))
        #expect(try IssuerKeys.Source("http://127.0.0.1:8081/jwks") == .url("http://127.0.0.1:8081/jwks"))
        #expect(try IssuerKeys.Source("/etc/playback/jwks.json") == .file("/etc/playback/jwks.json"))
        #expect(throws: ConfigurationError.self) { try IssuerKeys.Source("http://id.example/jwks") }
        #expect(throws: ConfigurationError.self) { try IssuerKeys.Source("ftp://id.example/jwks") }
    }
}

// MARK: Helpers

extension TestServer {
    /// The status of `GET /v1/me/player/devices` with `token`.
    func status(_ token: String) async throws -> Int {
        try await http("/v1/me/player/devices", headers: ["Authorization": "Bearer \(token)"]).status
    }
}

/// The claims an identity provider puts in its tokens.
struct IdPClaims: JWTPayload {
    var sub: String
    var exp = Date().timeIntervalSince1970 + 600
    var nbf: Double?
    var iss: String?
    var aud: [String]?
    var preferred_username: String?
    var country: String?

    init(sub: String) { self.sub = sub }

    func verify(using algorithm: some JWTAlgorithm) async throws {}

    enum CodingKeys: String, CodingKey {
        case sub, exp, nbf, iss, aud, preferred_username
        case country = "https://music.example/country"
    }
}

/// A private key the test signs with, and its public half as a JWK.
struct SigningKey: Sendable {
    let kid: String
    let jwk: [String: String]
    let publicPEM: String
    let keys: JWTKeyCollection

    func sign(_ claims: IdPClaims) async throws -> String {
        try await keys.sign(claims, kid: JWKIdentifier(string: kid))
    }

    static func rsa(_ kid: String) async throws -> SigningKey {
        let pem = try generateRSA()
        let key = try Insecure.RSA.PrivateKey(pem: pem)
        let (modulus, exponent) = try key.publicKey.getKeyPrimitives()
        let keys = JWTKeyCollection()
        await keys.add(rsa: key, digestAlgorithm: .sha256, kid: JWKIdentifier(string: kid))
        return SigningKey(
            kid: kid, jwk: ["kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": modulus.base64URL, "e": exponent.base64URL],
            publicPEM: key.publicKey.pemRepresentation, keys: keys)
    }

    static func ec(_ kid: String) async throws -> SigningKey {
        let key = ES256PrivateKey()
        let (x, y) = key.publicKey.parameters ?? ("", "")  // base64url, as a JWK has them
        let keys = JWTKeyCollection()
        await keys.add(ecdsa: key, kid: JWKIdentifier(string: kid))
        return SigningKey(
            kid: kid, jwk: ["kty": "EC", "kid": kid, "crv": "P-256", "x": x, "y": y],
            publicPEM: key.publicKey.pemRepresentation, keys: keys)
    }

    static func ed(_ kid: String) async throws -> SigningKey {
        let key = try EdDSA.PrivateKey(curve: .ed25519)
        let keys = JWTKeyCollection()
        await keys.add(eddsa: key, kid: JWKIdentifier(string: kid))
        return SigningKey(
            kid: kid, jwk: ["kty": "OKP", "kid": kid, "crv": "Ed25519", "alg": "EdDSA", "x": key.publicKey.rawRepresentation.base64URL],
            publicPEM: key.publicKey.pemRepresentation, keys: keys)
    }

    /// A fresh 2048-bit RSA key, PEM (openssl; swift-crypto's generator is not public API here).
    private static func generateRSA() throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestTimeout(waitingFor: "openssl to generate a key") }
        return String(decoding: data, as: UTF8.self)
    }
}

extension Data {
    var base64URL: String {
        base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}

/// An identity provider's key endpoint on loopback, whose answer the test changes.
final class KeySetServer: Sendable {
    private struct Answer {
        var body: String
        var status: Int
    }

    private let answer: Mutex<Answer>
    private let fetchCount = Atomic<Int>(0)
    private let hanging = Atomic<Bool>(false)
    private let listening = Atomic<Int>(0)

    var port: Int { listening.load(ordering: .relaxed) }

    var fetches: Int { fetchCount.load(ordering: .relaxed) }
    var hangs: Bool {
        get { hanging.load(ordering: .relaxed) }
        set { hanging.store(newValue, ordering: .relaxed) }
    }

    private init(_ keys: [SigningKey]) {
        answer = Mutex(Answer(body: Self.document(keys), status: 200))
    }

    static func document(_ keys: [SigningKey]) -> String {
        let encoded = keys.map { key in
            "{" + key.jwk.sorted { $0.key < $1.key }.map { #""\#($0.key)":"\#($0.value)""# }.joined(separator: ",") + "}"
        }
        // Keycloak publishes an encryption key beside its signing keys: it must be skipped.
        let encryption = #"{"kty":"RSA","kid":"enc-1","use":"enc","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"}"#
        return #"{"keys":["# + (encoded + [encryption]).joined(separator: ",") + "]}"
    }

    func publish(_ keys: [SigningKey]) { serve(raw: Self.document(keys)) }

    func serve(raw body: String, status: Int = 200) {
        answer.withLock { $0 = Answer(body: body, status: status) }
    }

    /// Points the daemon at this issuer.
    func configure(_ configuration: inout ServerConfiguration) {
        configuration.jwks = .url("http://127.0.0.1:\(port)/certs")
    }

    static func with<T>(_ keys: [SigningKey], _ body: (KeySetServer) async throws -> T) async throws -> T {
        let server = KeySetServer(keys)
        let router = Router()
        router.get("/certs") { _, _ -> Response in
            server.fetchCount.add(1, ordering: .relaxed)
            while server.hangs { try await Task.sleep(for: .milliseconds(50)) }
            let answer = server.answer.withLock { $0 }
            return Response(
                status: .init(code: answer.status), headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: answer.body)))
        }
        return try await LoopbackHTTP.serving(router, name: "the key server") { port in
            server.listening.store(port, ordering: .relaxed)
            return try await body(server)
        }
    }
}

/// A small HTTP server of a test's own on loopback, for as long as `body` runs.
enum LoopbackHTTP {
    static func serving<T>(_ router: Router<BasicRequestContext>, name: String, _ body: (Int) async throws -> T) async throws -> T {
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in
                continuation.yield(channel.localAddress?.port ?? 0)
                continuation.finish()
            })
        let task = Task { try await app.runService(gracefulShutdownSignals: []) }
        defer { task.cancel() }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next(), port > 0 else { throw TestTimeout(waitingFor: "\(name) to listen") }
        return try await body(port)
    }
}
