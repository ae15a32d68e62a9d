import ArgumentParser
import DeviceSimKit
import Foundation
import PlaybackCore
import StoreInspection

/// `device-sim`: a simulated device for people, one-shot remote commands, and a load generator.
@main
struct DeviceSim: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "device-sim",
        abstract: "A simulated playback device for playback-syncd, one-shot remote commands, and a load generator.",
        discussion: """
            Exit codes: 0 success, 1 the server answered with an error, 2 bad usage, 3 could not connect.
            Tokens are minted locally with PLAYBACK_JWT_SECRET (or --secret), else the daemon's development secret.
            """,
        subcommands: [
            Token.self, Connect.self, StateCommand.self, Devices.self, Play.self, Pause.self, Resume.self, Next.self,
            Previous.self, Seek.self, Volume.self, Repeat.self, Shuffle.self, Queue.self, Transfer.self, History.self,
            SwarmCommand.self,
        ])
}

/// Where and as whom to connect.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "The daemon. [PLAYBACK_SERVER, default ws://127.0.0.1:8080]")
    var server: String?
    @Option(help: "User id (the token's sub), for a token minted here with the HS256 secret.")
    var user: String?
    @Option(help: "A token from your identity provider, used as it is (then --user, --secret and --country are not needed). [PLAYBACK_ACCESS_TOKEN]")
    var accessToken: String?
    @Option(help: "HS256 secret. [PLAYBACK_JWT_SECRET, default: the development secret]")
    var secret: String?
    @Option(help: "Country claim (ISO 3166-1 alpha-2), for licensing.")
    var country: String?
    @Option(help: "For wss://: trust the certificates in this PEM file (a self-signed daemon) instead of the system's. [PLAYBACK_CA_FILE]")
    var caFile: String?

    func address() throws -> ServerAddress {
        try ServerAddress(url: server ?? ProcessInfo.processInfo.environment["PLAYBACK_SERVER"] ?? "ws://127.0.0.1:8080")
    }

    /// How to connect: TLS trust for wss://.
    func connectionOptions() throws -> DeviceConnection.Options {
        var options = DeviceConnection.Options()
        if let path = caFile ?? ProcessInfo.processInfo.environment["PLAYBACK_CA_FILE"] {
            options.tls = try TrustedCertificates.tls(caFile: path)
        }
        return options
    }

    func token() async throws -> String {
        if let given = accessToken ?? ProcessInfo.processInfo.environment["PLAYBACK_ACCESS_TOKEN"].flatMap({ $0.isEmpty ? nil : $0 }) {
            return given
        }
        guard let user else { throw ValidationError("give --user (a token is minted with the HS256 secret) or --access-token") }
        return try await AccessTokens.mint(user: user, ttlSeconds: 3_600, country: country, secret: secret)
    }
}

struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print an access token.")
    @Option(help: "User id.") var user: String
    @Option(help: "Lifetime, e.g. 90s, 15m, 12h, 7d.") var ttl = "24h"
    @Option(help: "HS256 secret. [PLAYBACK_JWT_SECRET]") var secret: String?
    @Option(help: "Country claim.") var country: String?

    func run() async throws {
        guard let seconds = AccessTokens.seconds(ttl), seconds > 0 else { throw ValidationError("--ttl takes e.g. 90s, 15m, 12h or 7d") }
        print(try await AccessTokens.mint(user: user, ttlSeconds: seconds, country: country, secret: secret))
    }
}
