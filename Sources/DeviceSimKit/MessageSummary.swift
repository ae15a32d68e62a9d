import NIOCore

/// What a load test needs of a server message, read without decoding it: its type and the
/// request it concerns (an `ack`'s or `error`'s `id`, a `state`'s `cause.request`), plus an
/// error's code. The swarm's light mode uses it, so that the load generator does per message
/// what the nchan reference's subscriber does (find one number), not a full JSON decode.
///
/// It scans for `"key":"`; inside a JSON string a quote is escaped (`\"`), so a key pattern never
/// matches string content.
public struct MessageSummary: Sendable, Equatable {
    public var type: String
    public var request: String?
    public var errorCode: String?

    public init(type: String, request: String? = nil, errorCode: String? = nil) {
        self.type = type
        self.request = request
        self.errorCode = errorCode
    }

    /// Nil when the bytes carry no `type`.
    public init?(_ bytes: ByteBufferView) {
        guard let type = Self.stringValue(of: Self.typeKey, in: bytes) else { return nil }
        self.type = type
        switch type {
        case "state": request = Self.stringValue(of: Self.requestKey, in: bytes)
        case "ack": request = Self.stringValue(of: Self.idKey, in: bytes)
        case "error":
            request = Self.stringValue(of: Self.idKey, in: bytes)
            errorCode = Self.stringValue(of: Self.codeKey, in: bytes)
        default: break
        }
    }

    private static let typeKey = Array(#""type":""#.utf8)
    private static let requestKey = Array(#""request":""#.utf8)
    private static let idKey = Array(#""id":""#.utf8)
    private static let codeKey = Array(#""code":""#.utf8)

    /// The string after the first `"key":"`, up to its closing quote (escapes kept as they are).
    static func stringValue(of key: [UInt8], in bytes: ByteBufferView) -> String? {
        guard let start = firstIndex(of: key, in: bytes) else { return nil }
        var end = start
        while end < bytes.endIndex {
            let byte = bytes[end]
            if byte == UInt8(ascii: "\"") { return String(decoding: bytes[start..<end], as: UTF8.self) }
            end = bytes.index(after: end) + (byte == UInt8(ascii: "\\") ? 1 : 0)
        }
        return nil
    }

    /// Where the bytes after the first occurrence of `pattern` start.
    private static func firstIndex(of pattern: [UInt8], in bytes: ByteBufferView) -> ByteBufferView.Index? {
        guard let first = pattern.first, bytes.count >= pattern.count else { return nil }
        var index = bytes.startIndex
        let last = bytes.endIndex - pattern.count
        while index <= last {
            if bytes[index] == first {
                var matched = 1
                while matched < pattern.count, bytes[index + matched] == pattern[matched] { matched += 1 }
                if matched == pattern.count { return index + matched }
            }
            index += 1
        }
        return nil
    }
}
