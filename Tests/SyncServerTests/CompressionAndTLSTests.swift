import Foundation
import NIOCore
import NIOSSL
import PlaybackCore
import PlaybackEngine
import Testing
@testable import DeviceSimKit
@testable import SyncServer

/// permessage-deflate negotiation and codec (the Autobahn sections 12-13 and the Python client
/// of check-openapi.py exercise it on the wire), and wss:// with a certificate of the test's own.
@Suite("compression and TLS")
struct CompressionAndTLSTests {
    @Test func deflateOffersAreAcceptedOrDeclinedAsRFC7692Says() {
        let plain = PerMessageDeflate.negotiate(["permessage-deflate; client_max_window_bits"])
        #expect(plain?.responseHeader == "permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        #expect(plain?.serverWindowBits == 15)
        let small = PerMessageDeflate.negotiate(["permessage-deflate; server_max_window_bits=10"])
        #expect(small?.serverWindowBits == 10 && small?.responseHeader.hasSuffix("server_max_window_bits=10") == true)
        #expect(PerMessageDeflate.negotiate(["permessage-deflate; server_max_window_bits=8"]) == nil, "zlib cannot honour 256 bytes")
        #expect(PerMessageDeflate.negotiate(["permessage-deflate; server_max_window_bits=16"]) == nil)
        #expect(PerMessageDeflate.negotiate(["permessage-deflate; server_max_window_bits=010"]) == nil)
        #expect(PerMessageDeflate.negotiate(["permessage-deflate; mystery"]) == nil)
        #expect(PerMessageDeflate.negotiate(["permessage-deflate; client_no_context_takeover; client_no_context_takeover"]) == nil)
        #expect(PerMessageDeflate.negotiate(["x-webkit-deflate-frame"]) == nil)
        let second = PerMessageDeflate.negotiate(["permessage-deflate; bogus, permessage-deflate; server_no_context_takeover"])
        #expect(second?.serverWindowBits == 15, "a declined offer falls through to the next")
    }

    @Test func messagesRoundTripAndInflationIsBounded() throws {
        let text = ByteBuffer(string: String(repeating: #"{"type":"state","state":{"volume":70}} "#, count: 200))
        let compressed = try #require(PerMessageDeflate.compress(text, windowBits: 15))
        #expect(compressed.readableBytes < text.readableBytes / 10)
        #expect(try PerMessageDeflate.decompress(compressed, limit: 65_536) == text)
        let bomb = try #require(PerMessageDeflate.compress(ByteBuffer(repeating: 0x20, count: 1_000_000), windowBits: 15))
        #expect(bomb.readableBytes < 2_000)
        #expect(throws: PerMessageDeflate.InflateError.tooBig) { try PerMessageDeflate.decompress(bomb, limit: 65_536) }
        #expect(throws: PerMessageDeflate.InflateError.corrupt) { try PerMessageDeflate.decompress(ByteBuffer(bytes: [0xFF, 0xFF, 0xFF]), limit: 65_536) }
    }

    @Test func aBroadcastIsCompressedOnceForEveryConnection() {
        let message = EncodedMessage(.devices((0..<20).map {
            DeviceInfo(id: "device-\($0)", name: "Device \($0)", kind: .speaker, online: true, active: false, lastSeen: 1_764_140_000_000)
        }))
        let deflate = PerMessageDeflate.negotiate(["permessage-deflate"])
        let first = message.payload(for: deflate)
        let second = message.payload(for: deflate)
        #expect(first.compressed && second.compressed)
        first.bytes.withUnsafeReadableBytes { a in
            second.bytes.withUnsafeReadableBytes { b in #expect(a.baseAddress == b.baseAddress, "the same storage, not a second compression") }
        }
        #expect(message.payload(for: nil).compressed == false)
    }

    @Test func aCompressedHelloIsUnderstood() async throws {
        try await TestServer.with({ $0.permessageDeflate = true }) { server in
            var options = DeviceConnection.Options()
            options.extensions = "permessage-deflate; client_max_window_bits"
            let client = try await TestClient.connect(port: server.port, token: try await server.token("alice"), options: options)
            let hello = try MessageCodec().encode(ClientMessage.hello(.init(device: .init(id: "phone", name: String(repeating: "Phone ", count: 10), kind: .smartphone))))
            let compressed = try #require(PerMessageDeflate.compress(ByteBuffer(bytes: hello), windowBits: 15))
            try await client.sendFrame(opcode: 0x1, payload: Array(compressed.readableBytesView), rsv1: true)
            // The welcome comes back compressed (RSV1), which this client does not inflate.
            guard case .compressedFrame(let bytes) = await client.next() else {
                Issue.record("no compressed welcome")
                return
            }
            let welcome = try PerMessageDeflate.decompress(bytes, limit: 65_536)
            #expect(String(buffer: welcome).contains(#""type":"welcome""#))
        }
    }

    /// A self-signed certificate for 127.0.0.1, made with openssl.
    static func certificate() throws -> (cert: String, key: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pbt-tls-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let cert = "\(directory)/cert.pem", key = "\(directory)/key.pem"
        let result = try runProgram("/usr/bin/openssl", [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ])
        guard result.code == 0 else { throw TestFailure("openssl failed: \(result.output)") }
        return (cert, key)
    }

    @Test func wssServesSessionsWithTheConfiguredCertificate() async throws {
        let (cert, key) = try await offloaded { try Self.certificate() }
        try await TestServer.with({ $0.tls = .init(certificatePath: cert, keyPath: key) }) { server in
            var options = DeviceConnection.Options()
            options.tls = try TrustedCertificates.tls(caFile: cert)
            let events = AsyncStream<ConnectionEvent>.makeStream()
            let connection = try await DeviceConnection.connect(
                to: ServerAddress(host: "127.0.0.1", port: server.port, secure: true), token: try await server.token("alice"),
                options: options
            ) { events.continuation.yield($0) }
            try await connection.send(.hello(.init(device: .init(id: "phone", name: "Phone", kind: .smartphone))))
            var welcomed = false
            for await event in events.stream {
                if case .message(.welcome, _) = event { welcomed = true; break }
            }
            #expect(welcomed)
            // Without trusting the certificate, and in plain text, there is no session.
            await #expect(throws: (any Error).self) {
                _ = try await DeviceConnection.connect(
                    to: ServerAddress(host: "127.0.0.1", port: server.port, secure: true), token: try await server.token("alice")) { _ in }
            }
            await #expect(throws: (any Error).self) {
                var plain = DeviceConnection.Options()
                plain.timeout = .seconds(2)
                _ = try await DeviceConnection.connect(
                    to: ServerAddress(host: "127.0.0.1", port: server.port), token: try await server.token("alice"), options: plain) { _ in }
            }
        }
    }

    @Test func unreadableCertificatesStopTheStart() async throws {
        var configuration = TestServer.fastConfiguration()
        configuration.tls = .init(certificatePath: "/nonexistent/cert.pem", keyPath: "/nonexistent/key.pem")
        await #expect(throws: ConfigurationError.self) { _ = try await buildApplication(configuration, engine: MemoryEngine()) }
    }
}
