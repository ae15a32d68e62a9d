import Logging
import OTel
import PlaybackEngine
import ServiceLifecycle
import Tracing

/// Where the daemon sends its traces: an OpenTelemetry collector over OTLP/HTTP.
public struct TraceExport: Sendable, Equatable {
    /// The collector's traces endpoint, used as it is (e.g. `http://collector:4318/v1/traces`).
    public var url: String
    /// OTLP's JSON encoding instead of protobuf.
    public var json = false
    /// The share of commands whose trace is kept, when no caller decided (a `traceparent`'s sampled
    /// flag wins). Keeping every trace costs about 60 % more CPU per command at 2,500 commands/s;
    /// keeping 1 in 100, about 2 % (docs/benchmarks.md).
    public var sampleRatio = 0.01
    /// How long spans wait to be sent in a batch.
    public var batchDelay: Duration = .seconds(1)

    public init(url: String) { self.url = url }

    /// Installs the exporter as the process's tracer and turns command tracing on. Returns the
    /// service that sends the spans; it must run (and stop last, to send the final ones).
    public func bootstrap(logger: Logger) throws -> any Service {
        guard url.hasPrefix("http://") || url.hasPrefix("https://") else {
            throw ConfigurationError(description: "the OTLP traces URL must be http:// or https://: \(url)")
        }
        guard (0...1).contains(sampleRatio) else { throw ConfigurationError(description: "the trace sample ratio must be from 0 to 1") }
        var configuration = OTel.Configuration.default
        configuration.serviceName = "playback-syncd"
        configuration.diagnosticLogger = .custom(logger)
        configuration.diagnosticLogLevel = .warning
        configuration.propagators = [.traceContext]
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        // Which roots are kept is decided before a span exists (`CommandTracing.keepsRoot`); a
        // child follows its parent, whose sampled flag a caller's traceparent carries.
        configuration.traces.sampler = .parentBasedAlwaysOn
        configuration.traces.batchSpanProcessor.scheduleDelay = batchDelay
        configuration.traces.otlpExporter.endpoint = url
        configuration.traces.otlpExporter.protocol = json ? .httpJSON : .httpProtobuf
        let (tracer, service) = try OTel.makeTracingBackend(configuration: configuration)
        InstrumentationSystem.bootstrap(tracer)
        CommandTracing.enable(tracer: tracer, rootSampleRatio: sampleRatio)
        return service
    }
}
