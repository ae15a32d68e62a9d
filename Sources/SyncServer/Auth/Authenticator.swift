import Foundation
import JWTKit
import Metrics
import NIOHTTP1
import PlaybackEngine

/// Checks a request's Origin and access token (header `Authorization: Bearer` or query
/// `access_token`), and signs tokens for development and tests.
///
/// A token's header decides which keys may verify it: `HS256` the shared secret (when one is
/// configured), the asymmetric algorithms the identity provider's key that its `kid` names (when a
/// JWKS is configured). Anything else, `none` included, is refused before any key is touched, so a
/// token cannot pick a key of another kind (algorithm confusion).
public struct Authenticator: Sendable {
    /// The shared secret's key, or nil when only the identity provider's keys count.
    let secretKeys: JWTKeyCollection?
    public let issuerKeys: IssuerKeys?
    public let rules: TokenRules
    public let allowedOrigins: Set<String>

    /// Development and tests: HS256 with `secret`, the default rules.
    public init(secret: String, allowedOrigins: [String]) async {
        await self.init(secret: secret, issuerKeys: nil, rules: TokenRules(), allowedOrigins: allowedOrigins)
    }

    public init(secret: String?, issuerKeys: IssuerKeys?, rules: TokenRules, allowedOrigins: [String]) async {
        if let secret {
            let keys = JWTKeyCollection()
            await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
            secretKeys = keys
        } else {
            secretKeys = nil
        }
        self.issuerKeys = issuerKeys
        self.rules = rules
        self.allowedOrigins = Set(allowedOrigins)
    }

    /// Verifies a token; the thrown `AuthError` says why it was refused.
    public func verify(token: String) async throws(AuthError) -> AccessToken {
        do {
            return try await verified(token)
        } catch {
            Counter(label: "playback_auth_refusals_total", dimensions: [("reason", error.reason)]).increment()
            throw error
        }
    }

    private func verified(_ token: String) async throws(AuthError) -> AccessToken {
        let header = try Self.header(of: token)
        let keys: JWTKeyCollection
        switch header.algorithm {
        case "HS256":
            guard let secretKeys else { throw .unsupportedAlgorithm }
            keys = secretKeys
        case let algorithm where IssuerKeys.algorithms.contains(algorithm):
            guard let issuerKeys else { throw .unsupportedAlgorithm }
            guard let kid = header.keyID else { throw .missingKeyID }
            keys = try await issuerKeys.collection(kid: kid, algorithm: algorithm)
        default:
            throw .unsupportedAlgorithm
        }
        let claims: TokenClaims
        do {
            claims = try await keys.verify(token, as: TokenClaims.self)
        } catch let error as JWTError where error.errorType == .signatureVerificationFailed {
            throw .badSignature
        } catch {
            throw .invalidToken
        }
        return try rules.accessToken(from: claims)
    }

    /// The parts of a token's header that choose its key.
    struct Header: Equatable {
        var algorithm: String
        var keyID: String?
    }

    /// The header longer than this (base64url) is refused unread.
    static let maximumHeaderBytes = 4_096

    static func header(of token: String) throws(AuthError) -> Header {
        guard let dot = token.utf8.firstIndex(of: UInt8(ascii: ".")) else { throw .invalidToken }
        let encoded = token.utf8[..<dot]
        guard encoded.count <= maximumHeaderBytes else { throw .oversizedHeader }
        guard let data = Data(base64URL: Substring(encoded)),
            let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
        else { throw .invalidToken }
        // Extensions this daemon would have to understand (RFC 7515 §4.1.11) are not guessed at.
        guard object["crit"] == nil else { throw .unsupportedAlgorithm }
        guard let algorithm = object["alg"] as? String else { throw .unsupportedAlgorithm }
        let keyID: String?
        switch object["kid"] {
        case nil: keyID = nil
        case let kid as String:
            guard kid.utf8.count <= IssuerKeys.maximumKeyIDBytes else { throw .unknownKey }
            keyID = kid
        default: throw .invalidToken
        }
        return Header(algorithm: algorithm, keyID: keyID)
    }

    /// Authenticates a request from its Origin, Authorization header and query.
    public func authenticate(origin: String?, authorization: String?, query: String?) async throws(AuthError) -> AccessToken {
        if let origin, !allowedOrigins.isEmpty, !allowedOrigins.contains(origin) { throw .foreignOrigin }
        guard let token = Self.token(authorization: authorization, query: query) else { throw .missingToken }
        return try await verify(token: token)
    }

    public func authenticate(_ head: HTTPRequestHead) async throws(AuthError) -> AccessToken {
        let query = head.uri.split(separator: "?", maxSplits: 1).dropFirst().first.map(String.init)
        return try await authenticate(
            origin: head.headers.first(name: "origin"), authorization: head.headers.first(name: "authorization"),
            query: query)
    }

    /// Signs with the shared secret (development tokens, tests).
    public func sign(_ token: AccessToken) async throws -> String {
        guard let secretKeys else { throw AuthError.unsupportedAlgorithm }
        return try await secretKeys.sign(token)
    }

    static func token(authorization: String?, query: String?) -> String? {
        if let authorization {
            let parts = authorization.split(separator: " ", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "bearer" { return String(parts[1]).trimmingCharacters(in: .whitespaces) }
        }
        guard let query else { return nil }
        for pair in query.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            if kv.count == 2, kv[0] == "access_token" { return String(kv[1]).removingPercentEncoding ?? String(kv[1]) }
        }
        return nil
    }
}

extension Data {
    /// Decodes base64url without padding (RFC 7515 §2); nil for anything else.
    init?(base64URL text: Substring) {
        var base64 = String(text).replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.utf8.count % 4 != 0 { base64 += "=" }
        self.init(base64Encoded: base64)
    }
}
