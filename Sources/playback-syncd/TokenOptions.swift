import ArgumentParser
import SyncServer

/// Whose tokens the daemon accepts: an identity provider's (a JWKS) and/or the HS256 secret's.
struct TokenOptions: ParsableArguments {
    @Option(
        help: """
            The identity provider's public keys (a JWKS): a file, or an https:// URL (http:// only to this machine). \
            RS256/384/512, PS256/384/512, ES256/384/512 and EdDSA tokens are verified with the key their kid names; \
            HS256 is then accepted only if --jwt-secret is given too. [PLAYBACK_JWKS]
            """)
    var jwks: String?
    @Option(help: "The iss every token must carry. [PLAYBACK_JWT_ISSUER, default: not checked]")
    var jwtIssuer: String?
    @Option(help: "A value the token's aud must hold. [PLAYBACK_JWT_AUDIENCE, default: not checked]")
    var jwtAudience: String?
    @Option(help: "The claim naming the user. [PLAYBACK_JWT_USER_CLAIM, default sub]")
    var jwtUserClaim: String?
    @Option(help: "The claim with the two-letter country, for licensing. [PLAYBACK_JWT_COUNTRY_CLAIM, default country]")
    var jwtCountryClaim: String?
    @Option(help: "How far the issuer's clock may be from this one, for exp and nbf, ms. [PLAYBACK_JWT_LEEWAY_MS, default 0]")
    var jwtLeewayMs: Int64?
    @Option(help: "Least time between two fetches of the JWKS caused by tokens naming an unknown kid, ms. [PLAYBACK_JWKS_REFRESH_MS, default 5000]")
    var jwksRefreshMs: Int64?
    @Option(help: "Keys older than this are fetched again (in the background, the old ones serving meanwhile), ms. [PLAYBACK_JWKS_MAX_AGE_MS, default 600000]")
    var jwksMaxAgeMs: Int64?
    @Option(help: "Time for one fetch of the JWKS, ms. [PLAYBACK_JWKS_TIMEOUT_MS, default 5000]")
    var jwksTimeoutMs: Int64?

    func apply(to config: inout ServerConfiguration) throws {
        if let location = setting(jwks, "PLAYBACK_JWKS") {
            do {
                config.jwks = try IssuerKeys.Source(location)
            } catch {
                throw ValidationError(error.description)
            }
        }
        config.tokenRules.issuer = setting(jwtIssuer, "PLAYBACK_JWT_ISSUER")
        config.tokenRules.audience = setting(jwtAudience, "PLAYBACK_JWT_AUDIENCE")
        config.tokenRules.userClaim = setting(jwtUserClaim, "PLAYBACK_JWT_USER_CLAIM") ?? config.tokenRules.userClaim
        config.tokenRules.countryClaim = setting(jwtCountryClaim, "PLAYBACK_JWT_COUNTRY_CLAIM") ?? config.tokenRules.countryClaim
        if let leeway = try number(jwtLeewayMs, "PLAYBACK_JWT_LEEWAY_MS") {
            guard (0...3_600_000).contains(leeway) else { throw ValidationError("--jwt-leeway-ms must be from 0 to 3600000") }
            config.tokenRules.leewaySeconds = Double(leeway) / 1_000
        }
        if let refresh = try number(jwksRefreshMs, "PLAYBACK_JWKS_REFRESH_MS") {
            guard refresh >= 100 else { throw ValidationError("--jwks-refresh-ms must be at least 100") }
            config.jwksSettings.minimumRefreshInterval = .milliseconds(refresh)
        }
        if let age = try number(jwksMaxAgeMs, "PLAYBACK_JWKS_MAX_AGE_MS") {
            guard age >= 1_000 else { throw ValidationError("--jwks-max-age-ms must be at least 1000") }
            config.jwksSettings.maximumAge = .milliseconds(age)
        }
        if let timeout = try number(jwksTimeoutMs, "PLAYBACK_JWKS_TIMEOUT_MS") {
            guard timeout > 0 else { throw ValidationError("--jwks-timeout-ms must be positive") }
            config.jwksSettings.fetchTimeout = .milliseconds(timeout)
        }
    }
}
