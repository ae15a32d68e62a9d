import Foundation
import JWTKit

/// What a verified token must claim, and where its user and country are: the same for
/// development (HS256) tokens and for an identity provider's (JWKS).
public struct TokenRules: Sendable, Equatable {
    /// The `iss` every token must carry, if set.
    public var issuer: String?
    /// A value the token's `aud` (a string or an array) must hold, if set.
    public var audience: String?
    /// The claim that names the user (Keycloak and Auth0 put it in `sub`).
    public var userClaim = "sub"
    /// The claim with the two-letter country used for licensing; tokens without it are licensed
    /// as having no country.
    public var countryClaim = "country"
    /// How far the issuer's clock may be from this one, for `exp` and `nbf`.
    public var leewaySeconds: Double = 0

    public init() {}

    /// The access token `claims` stand for, at `now`, or why they are refused.
    func accessToken(from claims: TokenClaims, now: Date = Date()) throws(AuthError) -> AccessToken {
        guard let exp = claims.number("exp") else { throw .missingClaim("exp") }
        guard exp.isFinite, exp <= AccessToken.latestExpiry else { throw .invalidExpiry }
        let nowSeconds = now.timeIntervalSince1970
        guard exp + leewaySeconds > nowSeconds else { throw .expired }
        if let nbf = claims.number("nbf"), nbf > nowSeconds + leewaySeconds { throw .notYetValid }
        if let issuer, claims.string("iss") != issuer { throw .wrongIssuer }
        if let audience, !claims.strings("aud").contains(audience) { throw .wrongAudience }
        guard let user = claims.string(userClaim) else { throw .missingClaim(userClaim) }
        guard AccessToken.isValidUserID(user) else { throw .invalidSubject }
        let country = claims.string(countryClaim)
        if let country, country.count != 2 { throw .invalidCountry }
        // A session lasts as long as the token would be accepted.
        let expires = Date(timeIntervalSince1970: min(exp + leewaySeconds, AccessToken.latestExpiry))
        return AccessToken(user: user, expires: expires, country: country, tier: claims.string("tier"))
    }
}

/// Every top-level claim of a token, whatever the issuer named them; `TokenRules` reads them.
struct TokenClaims: JWTPayload {
    enum Value: Decodable, Equatable {
        case string(String)
        case number(Double)
        case bool(Bool)
        case strings([String])
        case other

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let string = try? container.decode(String.self) {
                self = .string(string)
            } else if let number = try? container.decode(Double.self) {
                self = .number(number)
            } else if let bool = try? container.decode(Bool.self) {
                self = .bool(bool)
            } else if let strings = try? container.decode([String].self) {
                self = .strings(strings)
            } else {
                self = .other
            }
        }
    }

    private struct Name: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    var values: [String: Value]

    init(_ values: [String: Value]) { self.values = values }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Name.self)
        var values: [String: Value] = [:]
        for key in container.allKeys { values[key.stringValue] = try container.decode(Value.self, forKey: key) }
        self.values = values
    }

    func encode(to encoder: any Encoder) throws {
        // Claims are only ever read; `AccessToken` is what the daemon signs.
        throw EncodingError.invalidValue(self, .init(codingPath: [], debugDescription: "TokenClaims are not encoded"))
    }

    /// The signature is checked by then; `TokenRules` checks the rest with its settings.
    func verify(using algorithm: some JWTAlgorithm) async throws {}

    func string(_ name: String) -> String? {
        if case .string(let value) = values[name] { value } else { nil }
    }

    func number(_ name: String) -> Double? {
        if case .number(let value) = values[name] { value } else { nil }
    }

    /// A claim that may be one string or an array of them (`aud`).
    func strings(_ name: String) -> [String] {
        switch values[name] {
        case .string(let value): [value]
        case .strings(let values): values
        default: []
        }
    }
}
