import Synchronization
import Tracing

/// Spans of a command's way through the daemons: the command (WebSocket or REST), the engine,
/// the storage call, and each daemon's delivery of the change, which joins the trace through the
/// W3C `traceparent` the bus frame carries.
///
/// Off unless the daemon was started with a collector: a command then costs one relaxed load.
/// When on, a trace a caller did not start is kept for `rootSampleRatio` of the commands, decided
/// here before any span exists (a command left out costs an atomic add), and a caller's
/// `traceparent` decides for its own trace.
public enum CommandTracing {
    private static let enabled = Atomic<Bool>(false)
    /// Commands seen, for the sampling sequence.
    private static let sequence = Atomic<UInt64>(0)
    /// Written once by `enable`, before the daemon serves; read only when `isEnabled`.
    nonisolated(unsafe) private static var tracer: (any Tracer)?
    nonisolated(unsafe) private static var threshold: UInt64 = .max

    public static var isEnabled: Bool { enabled.load(ordering: .acquiring) }

    /// Called once at start, before the daemon serves: `tracer` records the spans, and roots are
    /// kept for `rootSampleRatio` (0–1) of the commands.
    public static func enable(tracer: any Tracer, rootSampleRatio: Double) {
        Self.tracer = tracer
        threshold = threshold(ratio: rootSampleRatio)
        enabled.store(true, ordering: .releasing)
    }

    /// Whether a command without a caller's trace starts one: a Weyl sequence (the golden ratio
    /// times a counter) spreads the kept ones evenly, with no random number drawn.
    public static func keepsRoot() -> Bool {
        guard threshold != .max else { return true }
        return keeps(step: sequence.wrappingAdd(1, ordering: .relaxed).newValue, threshold: threshold)
    }

    static func threshold(ratio: Double) -> UInt64 {
        ratio >= 1 ? .max : UInt64(max(ratio, 0) * Double(UInt64.max))
    }

    static func keeps(step: UInt64, threshold: UInt64) -> Bool {
        step &* 0x9E37_79B9_7F4A_7C15 < threshold
    }

    /// The longest `traceparent` a frame carries (W3C version 00 is 55 characters).
    static let maximumTraceParentBytes = 128

    /// `context` as a W3C `traceparent` header value, if it holds a span.
    static func traceParent(of context: ServiceContext) -> String? {
        var carrier: [String: String] = [:]
        InstrumentationSystem.instrument.inject(context, into: &carrier, using: DictionaryInjector())
        guard let value = carrier["traceparent"], value.utf8.count <= maximumTraceParentBytes else { return nil }
        return value
    }

    /// The context a `traceparent` (from another daemon, or a REST caller) continues.
    public static func context(traceParent: String) -> ServiceContext {
        var context = ServiceContext.topLevel
        guard traceParent.utf8.count <= maximumTraceParentBytes else { return context }
        InstrumentationSystem.instrument.extract(["traceparent": traceParent], into: &context, using: DictionaryExtractor())
        return context
    }

    /// Starts a span under `parent`, when there is one and its trace is kept: a trace left out
    /// stops here, so that it costs one span rather than one per step and daemon.
    public static func span(_ name: String, under parent: ServiceContext?, kind: SpanKind = .internal) -> (any Span)? {
        guard let parent, let tracer else { return nil }
        let span = tracer.startSpan(name, context: parent, ofKind: kind, at: DefaultTracerClock.now, function: #function, file: #fileID, line: #line)
        guard span.isRecording else {
            span.end()
            return nil
        }
        return span
    }

    private struct DictionaryInjector: Injector {
        func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
    }

    private struct DictionaryExtractor: Extractor {
        func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
    }
}

extension Span {
    /// Ends the span with the command's outcome.
    public func end(with result: Result<Receipt, PlaybackError>) {
        switch result {
        case .success(let receipt):
            attributes["playback.version"] = Int(receipt.version)
            attributes["playback.changed"] = receipt.changed
        case .failure(let error):
            attributes["playback.error"] = error.code.rawValue
            setStatus(SpanStatus(code: .error, message: error.message))
        }
        end()
    }
}
