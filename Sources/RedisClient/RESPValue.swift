import CHiredis
import NIOCore

/// A Redis reply (RESP2), copied out of hiredis before it frees its reply object.
public enum RESPValue: Sendable, Equatable, CustomStringConvertible {
    case simpleString(String)
    case error(String)
    case integer(Int64)
    case bulkString(ByteBuffer)
    case array([RESPValue])
    case null

    /// Deep-copies a hiredis reply.
    init(copying reply: UnsafePointer<redisReply>) {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STRING:
            var buffer = ByteBuffer()
            if let str = r.str, r.len > 0 {
                buffer.writeBytes(UnsafeRawBufferPointer(start: str, count: Int(r.len)))
            }
            self = .bulkString(buffer)
        case REDIS_REPLY_STATUS:
            self = .simpleString(r.str.map { String(cString: $0) } ?? "")
        case REDIS_REPLY_ERROR:
            self = .error(r.str.map { String(cString: $0) } ?? "")
        case REDIS_REPLY_INTEGER:
            self = .integer(Int64(r.integer))
        case REDIS_REPLY_ARRAY:
            var elements: [RESPValue] = []
            elements.reserveCapacity(Int(r.elements))
            if let element = r.element {
                for index in 0..<Int(r.elements) {
                    if let child = element[index] { elements.append(RESPValue(copying: child)) } else { elements.append(.null) }
                }
            }
            self = .array(elements)
        default:
            self = .null
        }
    }

    public var string: String? {
        switch self {
        case .simpleString(let value): value
        case .bulkString(let buffer): String(buffer: buffer)
        case .integer(let value): String(value)
        default: nil
        }
    }

    public var int: Int64? {
        switch self {
        case .integer(let value): value
        case .bulkString, .simpleString: string.flatMap { Int64($0) }
        default: nil
        }
    }

    public var array: [RESPValue]? {
        if case .array(let values) = self { return values }
        return nil
    }

    public var isNull: Bool { self == .null }

    public var description: String {
        switch self {
        case .simpleString(let value): "+\(value)"
        case .error(let value): "-\(value)"
        case .integer(let value): ":\(value)"
        case .bulkString(let buffer): "$\"\(String(buffer: buffer).prefix(80))\""
        case .array(let values): "[\(values.map(\.description).joined(separator: ", "))]"
        case .null: "(nil)"
        }
    }
}

/// One argument of a Redis command.
public enum RedisArgument: Sendable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    case string(String)
    case bytes(ByteBuffer)
    case integer(Int64)

    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
}
