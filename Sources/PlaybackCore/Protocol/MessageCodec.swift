import Foundation

/// Turns frames into messages and back. Decoding failures become protocol errors
/// (`bad_request`, `unknown_op`) with a message that names the offending field, and keep
/// the request id when the frame had one, so the error can echo it.
public struct MessageCodec: Sendable {
    /// A frame that is not a valid client message.
    public struct Rejection: Error, Sendable, Equatable {
        public var error: PlaybackError
        public var requestID: String?
    }

    public init() {}

    public func decodeClientMessage(_ bytes: some Collection<UInt8>) -> Result<ClientMessage, Rejection> {
        let data = Data(bytes)
        do {
            return .success(try JSONDecoder().decode(ClientMessage.self, from: data))
        } catch let error as MessageDecodingError {
            return .failure(Rejection(error: error.error, requestID: Self.requestID(in: data)))
        } catch let error as DecodingError {
            return .failure(Rejection(error: .badRequest(Self.describe(error)), requestID: Self.requestID(in: data)))
        } catch {
            return .failure(Rejection(error: .badRequest("the message is not valid JSON"), requestID: nil))
        }
    }

    public func decodeServerMessage(_ bytes: some Collection<UInt8>) throws -> ServerMessage {
        try JSONDecoder().decode(ServerMessage.self, from: Data(bytes))
    }

    public func encode(_ message: ServerMessage) throws -> Data {
        try Self.encoder.encode(message)
    }

    public func encode(_ message: ClientMessage) throws -> Data {
        try Self.encoder.encode(message)
    }

    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        return encoder
    }()

    private struct IDProbe: Decodable {
        var id: String?

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            id = try? c.decodeIfPresent(String.self, forKey: .id)
        }

        enum CodingKeys: String, CodingKey { case id }
    }

    /// An over-long id is not echoed: the error says it was too long.
    private static func requestID(in data: Data) -> String? {
        guard let id = (try? JSONDecoder().decode(IDProbe.self, from: data))?.id ?? nil, ProtocolInfo.isValidRequestID(id) else { return nil }
        return id
    }

    /// The string `id` of a JSON object, if it has one; for answering messages that are not decoded.
    public func requestID(in bytes: some Collection<UInt8>) -> String? {
        Self.requestID(in: Data(bytes))
    }

    /// A one-line description of a decoding failure naming the field, e.g. `args.percent: expected Int`.
    static func describe(_ error: DecodingError) -> String {
        func path(_ codingPath: [any CodingKey]) -> String {
            let parts = codingPath.map { key in key.intValue.map { "[\($0)]" } ?? key.stringValue }
            return parts.isEmpty ? "message" : parts.joined(separator: ".").replacingOccurrences(of: ".[", with: "[")
        }
        switch error {
        case .keyNotFound(let key, let context):
            let field = path(context.codingPath + [key])
            return field == "type" ? "the message has no string type" : "\(field) is missing"
        case .typeMismatch(let type, let context):
            return "\(path(context.codingPath)) has the wrong type (expected \(describe(type)))"
        case .valueNotFound(let type, let context):
            return "\(path(context.codingPath)) is null (expected \(describe(type)))"
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty { return "the message is not a valid JSON object" }
            return "\(path(context.codingPath)) has an invalid value"
        @unknown default:
            return "the message is malformed"
        }
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Bool.Type: "a boolean"
        case is Int.Type, is Int64.Type: "an integer"
        case is Double.Type: "a number"
        default: "\(type)".contains("Dictionary") ? "an object" : ("\(type)".contains("Array") ? "an array" : "\(type)")
        }
    }
}
