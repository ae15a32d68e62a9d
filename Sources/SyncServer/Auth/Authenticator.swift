import Foundation
import JWTKit
import NIOHTTP1
import PlaybackEngine

/// Checks a request's Origin and access token (header `Authorization: Bearer` or query
/// `access_token`) and signs tokens for development and tests.
public struct Authenticator: Sendable {
    public let keys: JWTKeyCollection
    public let allowedOrigins: Set<String>

    public init(secret: String, allowedOrigins: [String]) async {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        self.keys = keys
        self.allowedOrigins = Set(allowedOrigins)
    }

    /// Verifies a token; the thrown `AuthError` says why it was refused.
    public func verify(token: String) async throws(AuthError) -> AccessToken {
        do {
            return try await keys.verify(token, as: AccessToken.self)
        } catch let error as AuthError {
            throw error
        } catch let error as JWTError where error.errorType == .claimVerificationFailure {
            throw .expired
        } catch {
            throw .invalidToken
        }
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

    public func sign(_ token: AccessToken) async throws -> String {
        try await keys.sign(token)
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
