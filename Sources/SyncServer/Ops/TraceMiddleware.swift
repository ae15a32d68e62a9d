import HTTPTypes
import Hummingbird
import PlaybackEngine
import Tracing

/// A span per HTTP request when tracing is on: it continues the caller's W3C `traceparent`, else
/// starts a trace for the share of requests `CommandTracing` keeps. Only the method, the path and
/// the status are recorded: never the query, which may hold an `access_token`.
struct TraceMiddleware<Context: RequestContext>: RouterMiddleware {
    static var traceParent: HTTPField.Name { HTTPField.Name("traceparent")! }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let parent: ServiceContext
        if let traceParent = request.headers[Self.traceParent] {
            parent = CommandTracing.context(traceParent: traceParent)
        } else if CommandTracing.keepsRoot() {
            parent = .topLevel
        } else {
            return try await next(request, context)
        }
        guard let span = CommandTracing.span("\(request.method.rawValue) \(request.uri.path)", under: parent, kind: .server) else {
            return try await next(request, context)
        }
        span.attributes["http.request.method"] = request.method.rawValue
        span.attributes["url.path"] = request.uri.path
        do {
            let response = try await ServiceContext.withValue(span.context) { try await next(request, context) }
            span.attributes["http.response.status_code"] = Int(response.status.code)
            if response.status.code >= 500 { span.setStatus(SpanStatus(code: .error)) }
            span.end()
            return response
        } catch {
            span.recordError(error)
            span.end()
            throw error
        }
    }
}
