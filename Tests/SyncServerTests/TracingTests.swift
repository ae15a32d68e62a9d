import Foundation
import Hummingbird
import NIOCore
import Synchronization
import Testing

/// Two real daemons on one Redis, sending their spans to a small OTLP/HTTP receiver of the test's.
@Suite("traces")
struct TracingTests {
    @Test(.enabled(if: FaultCluster.binaryExists, "needs .build/debug/playback-syncd"))
    func aCommandsTraceRunsFromTheRequestThroughTheEngineAndStorageToEveryDaemonsDelivery() async throws {
        try await OTLPReceiver.with { receiver in
            let redis = ProcessInfo.processInfo.environment["PLAYBACK_REDIS_URL"] ?? "redis://127.0.0.1:6390/0"
            let arguments = [
                "--engine", "redis", "--redis-url", redis, "--otlp-traces-url", "http://127.0.0.1:\(receiver.port)/v1/traces",
                "--otlp-protocol", "json", "--trace-sample-ratio", "1",
            ]
            let (first, second) = try await offloaded {
                let first = try DaemonProcess(arguments: arguments)
                let second = try DaemonProcess(arguments: arguments)
                try first.waitUntilHealthy()
                try second.waitUntilHealthy()
                return (first, second)
            }
            defer {
                first.stop()
                second.stop()
            }
            let user = "traced-\(first.port)"
            let token = try await FaultCluster.token(user: user)
            let speaker = try await TestClient.connect(port: first.port, token: token)
            _ = try await speaker.hello("speaker", kind: .speaker)
            let phone = try await TestClient.connect(port: second.port, token: token)
            _ = try await phone.hello("phone")

            // REST, continuing the caller's trace.
            let traceID = (0..<2).map { _ in String(format: "%016llx", UInt64.random(in: 1...UInt64.max)) }.joined()
            let callerSpan = String(format: "%016llx", UInt64.random(in: 1...UInt64.max))
            let play = try await offloaded {
                try runProgram("/usr/bin/curl", [
                    "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", "-X", "PUT",
                    "http://127.0.0.1:\(first.port)/v1/me/player/play?device_id=speaker",
                    "-H", "Authorization: Bearer \(token)", "-H", "traceparent: 00-\(traceID)-\(callerSpan)-01",
                    "-H", "Content-Type: application/json", "-d", #"{"track_ids":["t0001"]}"#,
                ])
            }
            #expect(play.output == "200", "\(play.output)")
            let rest = try await receiver.trace(traceID) { spans in spans.filter { $0.name == "deliver" }.count >= 2 }
            let request = try #require(rest.first { $0.parentSpanID == callerSpan }, "no span continues the caller's: \(rest)")
            let engine = try #require(rest.first { $0.name == "engine play" }, "\(rest)")
            let storage = try #require(rest.first { $0.name == "storage command" }, "\(rest)")
            #expect(engine.parentSpanID == request.spanID)
            #expect(storage.parentSpanID == engine.spanID)
            let deliveries = rest.filter { $0.name == "deliver" }
            #expect(deliveries.allSatisfy { $0.parentSpanID == storage.spanID }, "\(deliveries)")

            // A WebSocket command starts a trace of its own, delivered by both daemons.
            _ = try await speaker.expect("lease_granted")
            try await phone.acked("p1", .pause)
            let started = try await receiver.spans { $0.name == "ws pause" }
            let root = try #require(started.first)
            #expect(root.parentSpanID == nil, "\(root)")
            let pause = try await receiver.trace(root.traceID) { spans in spans.filter { $0.name == "deliver" }.count >= 2 }
            #expect(pause.contains { $0.name == "engine pause" && $0.parentSpanID == root.spanID }, "\(pause)")
        }
    }
}

/// An OpenTelemetry collector's OTLP/HTTP traces endpoint (JSON), keeping every span it gets.
final class OTLPReceiver: Sendable {
    struct Span: Sendable, CustomStringConvertible {
        var traceID: String
        var spanID: String
        var parentSpanID: String?
        var name: String
        var serviceInstance: String?

        var description: String { "\(name) \(spanID)←\(parentSpanID ?? "root")" }
    }

    private let received = Mutex<[Span]>([])
    private let listening = Atomic<Int>(0)
    var port: Int { listening.load(ordering: .relaxed) }

    /// Waits until the spans of `traceID` satisfy `complete`.
    func trace(_ traceID: String, timeout: Duration = .seconds(15), until complete: ([Span]) -> Bool) async throws -> [Span] {
        try await spans(timeout: timeout, matching: { $0.traceID == traceID }, until: complete)
    }

    /// Waits for a span matching `predicate`.
    func spans(timeout: Duration = .seconds(15), _ predicate: @escaping (Span) -> Bool) async throws -> [Span] {
        try await spans(timeout: timeout, matching: predicate) { !$0.isEmpty }
    }

    private func spans(timeout: Duration, matching: (Span) -> Bool, until complete: ([Span]) -> Bool) async throws -> [Span] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let found = received.withLock { $0 }.filter(matching)
            if complete(found) { return found }
            guard ContinuousClock.now < deadline else { throw TestTimeout(waitingFor: "spans; got \(found)") }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// OTLP JSON names ids in hex; protobuf's JSON mapping would give base64: both are read.
    private static func hex(_ value: Any?) -> String? {
        guard let text = value as? String, !text.isEmpty else { return nil }
        if text.count == 32 || text.count == 16, text.allSatisfy(\.isHexDigit) { return text.lowercased() }
        guard let data = Data(base64Encoded: text) else { return text }
        return data.map { String(format: "%02x", $0) }.joined()
    }

    private func receive(_ body: ByteBuffer) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] else { return }
        var spans: [Span] = []
        for resource in object["resourceSpans"] as? [[String: Any]] ?? [] {
            let attributes = (resource["resource"] as? [String: Any])?["attributes"] as? [[String: Any]] ?? []
            let instance = attributes.first { $0["key"] as? String == "service.instance.id" }
                .flatMap { ($0["value"] as? [String: Any])?["stringValue"] as? String }
            for scope in resource["scopeSpans"] as? [[String: Any]] ?? [] {
                for span in scope["spans"] as? [[String: Any]] ?? [] {
                    guard let traceID = Self.hex(span["traceId"]), let spanID = Self.hex(span["spanId"]), let name = span["name"] as? String
                    else { continue }
                    spans.append(Span(
                        traceID: traceID, spanID: spanID, parentSpanID: Self.hex(span["parentSpanId"]), name: name, serviceInstance: instance))
                }
            }
        }
        received.withLock { $0.append(contentsOf: spans) }
    }

    static func with<T>(_ body: (OTLPReceiver) async throws -> T) async throws -> T {
        let receiver = OTLPReceiver()
        let router = Router()
        router.post("/v1/traces") { request, _ -> Response in
            receiver.receive(try await request.body.collect(upTo: 16 << 20))
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: "{}")))
        }
        return try await LoopbackHTTP.serving(router, name: "the OTLP receiver") { port in
            receiver.listening.store(port, ordering: .relaxed)
            return try await body(receiver)
        }
    }
}
