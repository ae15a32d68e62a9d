import CHiredis
import NIOCore

/// Encodes commands with hiredis's `redisFormatCommandArgv`.
enum RESPEncoder {
    static func encode(_ arguments: [RedisArgument], into buffer: inout ByteBuffer) {
        // Byte arrays that stay alive while hiredis formats them.
        let parts: [[UInt8]] = arguments.map { argument in
            switch argument {
            case .string(let value): Array(value.utf8)
            case .bytes(let bytes): Array(bytes.readableBytesView)
            case .integer(let value): Array(String(value).utf8)
            }
        }
        var lengths = parts.map { $0.count }
        var pointers: [UnsafeMutablePointer<CChar>?] = parts.map { part in
            let pointer = UnsafeMutablePointer<CChar>.allocate(capacity: max(part.count, 1))
            part.withUnsafeBytes { raw in
                if let base = raw.baseAddress { pointer.update(from: base.assumingMemoryBound(to: CChar.self), count: part.count) }
            }
            return pointer
        }
        defer { for pointer in pointers { pointer?.deallocate() } }
        var target: UnsafeMutablePointer<CChar>?
        let length = pointers.withUnsafeMutableBufferPointer { argv in
            argv.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: argv.count) { argvPointer in
                redisFormatCommandArgv(&target, Int32(parts.count), argvPointer, &lengths)
            }
        }
        guard length > 0, let target else { return }
        buffer.writeBytes(UnsafeRawBufferPointer(start: target, count: Int(length)))
        redisFreeCommand(target)
    }
}

/// Parses replies with hiredis's `redisReader`; replies are copied into `RESPValue`s and freed.
/// Not thread-safe: one parser per connection, used on its event loop. Public for the fuzz target
/// (`fuzz-resp`), which feeds it arbitrary bytes.
public final class RESPParser {
    private let reader: UnsafeMutablePointer<redisReader>

    public struct ProtocolError: Error, CustomStringConvertible {
        public var description: String
    }

    public init() {
        // Arrays are bounded (`PLAYBACK_MAX_REPLY_ELEMENTS` in the shim): hiredis allocates an
        // array's slots on its header, before any element arrives.
        guard let reader = playback_reader_create() else { preconditionFailure("hiredis could not allocate a reader") }
        self.reader = reader
    }

    deinit { playback_reader_free(reader) }

    public func feed(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { bytes in
            guard let base = bytes.baseAddress else { return }
            _ = redisReaderFeed(reader, base.assumingMemoryBound(to: CChar.self), bytes.count)
        }
    }

    /// The next complete reply, or nil when more bytes are needed.
    public func next() throws -> RESPValue? {
        var reply: UnsafeMutableRawPointer?
        guard redisReaderGetReply(reader, &reply) == REDIS_OK else {
            let message = withUnsafeBytes(of: reader.pointee.errstr) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            throw ProtocolError(description: "invalid reply from Redis: \(message)")
        }
        guard let reply else { return nil }
        defer { freeReplyObject(reply) }
        return RESPValue(copying: reply.assumingMemoryBound(to: redisReply.self))
    }
}
