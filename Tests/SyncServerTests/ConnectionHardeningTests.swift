import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import NIOCore
import NIOPosix
import PlaybackCore
import RedisClient
import SyncServer
import Synchronization
import Testing

/// What a hostile or broken client does to a connection before and after the upgrade, and the
/// settings the daemon refuses to start with. Each case is in the catalogue of docs/reliability.md.
@Suite("connection hardening")
struct ConnectionHardeningTests {
    // MARK: Pings

    @Test func aClientThatPingsAndNeverReadsIsClosed4008() async throws {
        try await TestServer.with(recordingLogs: true, {
            $0.sendBufferBytes = 64 * 1_024
            $0.messagesPerSecond = 100_000
            $0.messageBurst = 100_000
        }) { server in
            let client = try await server.connect(receiveBuffer: 4_096, autoRead: false)
            try await client.send(.hello(.init(device: .init(id: "pinger", name: "Pinger", kind: .other))))
            // 20,000 pings of 120 bytes: 2.4 MB of pongs, far past the 64 KiB send buffer.
            // The server may close while the pings are still being written.
            for _ in 0..<10 { try? await client.sendFrames(opcode: 0x9, payload: Array(repeating: 0x70, count: 120), count: 2_000) }
            // Its close frame waits behind the pongs this client never read: the socket may be gone first.
            let code = await client.closeAfterReadingEverything()
            #expect(code == 4008 || code == nil, "ended, not answered forever")
            // The close frame may never reach it: the server's own account of this connection says why it ended.
            // (It is this server's only connection; its hello may still be on its way when it is closed.)
            #expect(!server.logs.entries("close handshake", where: ["close.code": "4008"]).isEmpty, "closed with 4008")
        }
    }

    @Test func aPingFloodIsClosed4029() async throws {
        try await TestServer.with { server in
            let (client, _) = try await server.device("pinger")
            try? await client.sendFrames(opcode: 0x9, payload: [1, 2, 3], count: 2_000)
            #expect(await client.closeAfterReadingEverything() == 4029)
        }
    }

    @Test func pingsWithinTheLimitsAreAnswered() async throws {
        try await TestServer.with { server in
            let (client, _) = try await server.device("pinger")
            try await client.sendFrames(opcode: 0x9, payload: [7], count: 20)
            #expect(try await client.command("after", .volume(percent: 3)) == .ack(.init(id: "after", version: 1)))
        }
    }

    // MARK: Before the upgrade

    @Test func aSilentConnectionIsClosedAfterTheRequestTimeout() async throws {
        try await TestServer.with({ $0.requestTimeoutMs = 300 }) { server in
            // The server's deadline starts when it accepts, after this stopwatch and before `open` returns.
            let started = ContinuousClock.now
            let raw = try await RawConnection.open(port: server.port)
            let (closed, received) = await raw.waitForClose(within: .seconds(10))
            #expect(closed && received.isEmpty)
            #expect(ContinuousClock.now - started >= .milliseconds(250))
        }
    }

    @Test func aHalfSentRequestIsClosedAfterTheRequestTimeout() async throws {
        try await TestServer.with({ $0.requestTimeoutMs = 2_000 }) { server in
            let raw = try await RawConnection.open(port: server.port)
            try await raw.write("GET /v1/connect HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
            let (closed, received) = await raw.waitForClose(within: .seconds(10))
            #expect(closed && received.isEmpty)
        }
    }

    @Test func aGarbageRequestIsAnswered400AndClosed() async throws {
        try await TestServer.with { server in
            let raw = try await RawConnection.open(port: server.port)
            try await raw.write("GARBAGE\r\n\r\n")
            let started = ContinuousClock.now
            let (closed, received) = await raw.waitForClose(within: .seconds(10))
            #expect(closed)
            #expect(ContinuousClock.now - started < .seconds(9), "closed for the garbage, not by the 10 s request timeout")
            #expect(received.hasPrefix("HTTP/1.1 400"), "\(received.prefix(200))")
        }
    }

    @Test func aTLSHandshakeThatNeverStartsIsClosedAfterTheRequestTimeout() async throws {
        let (cert, key) = try await offloaded { try CompressionAndTLSTests.certificate() }
        try await TestServer.with({
            $0.tls = .init(certificatePath: cert, keyPath: key)
            $0.requestTimeoutMs = 300
        }) { server in
            let raw = try await RawConnection.open(port: server.port)
            let (closed, _) = await raw.waitForClose(within: .seconds(10))
            #expect(closed)
        }
    }

    @Test func anIdleHTTPConnectionIsClosedAfterItsRequest() async throws {
        try await TestServer.with({ $0.requestTimeoutMs = 2_000 }) { server in
            let raw = try await RawConnection.open(port: server.port)
            try await raw.write("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            let (closed, received) = await raw.waitForClose(within: .seconds(10))
            #expect(received.hasPrefix("HTTP/1.1 200"))
            #expect(closed, "a kept-alive connection that sends nothing more is closed")
        }
    }

    // MARK: Request ids

    @Test func requestIDsLongerThan128BytesAreRefused() async throws {
        try await TestServer.with { server in
            let (phone, _) = try await server.device("phone")
            let longest = String(repeating: "i", count: ProtocolInfo.maxRequestIDBytes)
            #expect(try await phone.command(longest, .volume(percent: 5)) == .ack(.init(id: longest, version: 1)))
            for length in [129, 1_024, 8_192, 60_000] {
                try await phone.send(.command(.init(id: String(repeating: "x", count: length), command: .volume(percent: 6))))
                guard case .error(let error) = try await phone.expect("error") else { return }
                #expect(error.code == .badRequest && error.id == nil, "\(length) bytes")
                #expect(error.message.contains("128"))
            }
            // Multi-byte characters count by their bytes.
            try await phone.send(.command(.init(id: String(repeating: "é", count: 65), command: .volume(percent: 7))))
            guard case .error(let error) = try await phone.expect("error") else { return }
            #expect(error.code == .badRequest)
            #expect(try await phone.command("short", .volume(percent: 8)) == .ack(.init(id: "short", version: 2)), "nothing applied")
        }
    }

    @Test func anIdempotencyKeyLongerThan128BytesIs400() async throws {
        try await TestServer.with { server in
            let auth = ["Authorization": "Bearer \(try await server.token("alice"))"]
            let long = try await server.http(
                "/v1/me/player/volume?volume_percent=5", method: "PUT", headers: auth.merging(["Idempotency-Key": String(repeating: "k", count: 8_192)]) { $1 })
            #expect(long.status == 400 && long.body.contains("bad_request") && long.body.contains("128"))
            let fine = try await server.http(
                "/v1/me/player/volume?volume_percent=5", method: "PUT", headers: auth.merging(["Idempotency-Key": String(repeating: "k", count: 128)]) { $1 })
            #expect(fine.status == 200 || fine.status == 404, "\(fine)")
        }
    }

    // MARK: Tokens

    @Test(arguments: [1e300, 1e20, 253_402_300_800])
    func aTokenWithAnAbsurdExpiryIs401(expiry: Double) async throws {
        try await TestServer.with { server in
            let token = try await server.token(expiringAt: Date(timeIntervalSince1970: expiry))
            let rest = try await server.http("/v1/me/player", headers: ["Authorization": "Bearer \(token)"])
            #expect(rest.status == 401 && rest.body.contains("exp"), "\(rest)")
            await #expect(throws: (any Error).self) { try await TestClient.connect(port: server.port, token: token) }
            // The daemon is still there.
            #expect(try await server.http("/healthz").status == 200)
        }
    }

    // MARK: Settings the daemon refuses

    @Test func configurationsThatExposeTheDevelopmentSecretAreRefused() throws {
        var configuration = ServerConfiguration()
        #expect(throws: Never.self) { try configuration.validate() }
        configuration.host = "0.0.0.0"
        #expect(throws: ConfigurationError.self) { try configuration.validate() }
        configuration.insecureDevelopmentSecretOnNetwork = true
        #expect(throws: Never.self) { try configuration.validate() }
        configuration.insecureDevelopmentSecretOnNetwork = false
        configuration.jwtSecret = String(repeating: "s", count: 32)
        #expect(throws: Never.self) { try configuration.validate() }
        configuration.jwtSecret = "short"
        #expect(throws: ConfigurationError.self) { try configuration.validate() }
    }

    @Test(.enabled(if: FaultCluster.binaryExists, "needs .build/debug/playback-syncd"))
    func theDaemonRefusesAnEmptySecretAndTheDevelopmentSecretOnTheNetwork() throws {
        let empty = try runProgram("/usr/bin/env", ["PLAYBACK_JWT_SECRET=", FaultCluster.binary, "--port", "0"])
        #expect(empty.code != 0 && empty.output.contains("empty"), "\(empty.output)")
        let flag = try runProgram(FaultCluster.binary, ["--port", "0", "--jwt-secret", ""])
        #expect(flag.code != 0 && flag.output.contains("empty"), "\(flag.output)")
        let network = try runProgram("/usr/bin/env", ["-u", "PLAYBACK_JWT_SECRET", FaultCluster.binary, "--port", "0", "--host", "0.0.0.0"])
        #expect(network.code != 0 && network.output.contains("--insecure-development-secret-on-network"), "\(network.output)")
    }

    @Test(.enabled(if: FaultCluster.binaryExists, "needs .build/debug/playback-syncd"))
    func aRedisPasswordNeverReachesTheLog() throws {
        let daemon = try DaemonProcess(arguments: ["--engine", "redis", "--redis-url", "redis://:hunter2-secret@127.0.0.1:1/0", "--redis-timeout-ms", "200"])
        defer { daemon.stop() }
        try daemon.waitUntilHealthy()
        let log = try String(contentsOfFile: daemon.log, encoding: .utf8)
        #expect(log.contains("redis://:***@127.0.0.1:1/0"), "\(log.suffix(1_000))")
        #expect(!log.contains("hunter2"))
        let invalid = try runProgram(FaultCluster.binary, ["--port", "0", "--engine", "redis", "--redis-url", "rediss://u:hunter2@h"])
        #expect(invalid.code != 0 && !invalid.output.contains("hunter2"), "\(invalid.output)")
    }

    @Test func redisURLsAreRedacted() throws {
        #expect(RedisConfiguration.redacted("redis://user:pw@h:1/2") == "redis://user:***@h:1/2")
        #expect(RedisConfiguration.redacted("redis://:pw@h") == "redis://:***@h")
        #expect(RedisConfiguration.redacted("redis://h:6379/0") == "redis://h:6379/0")
        #expect(RedisConfiguration.redacted("redis://user@h") == "redis://user@h")
        #expect(try RedisConfiguration(url: "redis://u:pw@h:7/3").redacted == "redis://u:***@h:7/3")
        #expect(try RedisConfiguration(url: "redis://h").redacted == "redis://h:6379/0")
    }
}

/// A plain TCP connection to the server, for what comes before (or instead of) an HTTP request.
final class RawConnection: Sendable {
    let channel: any Channel
    private let received: Received

    final class Received: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let bytes = Mutex<[UInt8]>([])

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            bytes.withLock { $0.append(contentsOf: buffer.readableBytesView) }
        }
    }

    private init(channel: any Channel, received: Received) {
        self.channel = channel
        self.received = received
    }

    static func open(port: Int) async throws -> RawConnection {
        let received = Received()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(received) } }
            .connect(host: "127.0.0.1", port: port).get()
        return RawConnection(channel: channel, received: received)
    }

    func write(_ text: String) async throws {
        try await channel.writeAndFlush(ByteBuffer(string: text)).get()
    }

    /// Whether the server closed the connection within `within`, and what it sent.
    func waitForClose(within: Duration) async -> (closed: Bool, received: String) {
        let deadline = ContinuousClock.now + within
        while channel.isActive, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        let closed = !channel.isActive
        if !closed { try? await channel.close() }
        return (closed, String(decoding: received.bytes.withLock { $0 }, as: UTF8.self))
    }
}
