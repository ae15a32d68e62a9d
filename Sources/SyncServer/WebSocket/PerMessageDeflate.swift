import CZlib
import Foundation
import NIOCore
import PlaybackEngine

/// permessage-deflate (RFC 7692) as this server speaks it: no context takeover in either
/// direction, so every message is compressed on its own. A broadcast is then compressed once and
/// the same bytes go to every device that negotiated the same window, and a connection keeps no
/// zlib state between messages (a few bytes of parameters instead of two windows).
struct PerMessageDeflate: Sendable, Equatable {
    /// The LZ77 window the server compresses with (the client may have asked for less than 15).
    var serverWindowBits: Int32 = 15
    /// The value of `Sec-WebSocket-Extensions` in the 101 response.
    var responseHeader: String

    /// Messages shorter than this go out uncompressed (RSV1 is per message).
    static let minimumSize = 64

    /// Picks the first acceptable permessage-deflate offer of a client's `Sec-WebSocket-Extensions`
    /// headers; nil when there is none (the connection then runs uncompressed).
    static func negotiate(_ headers: [String]) -> PerMessageDeflate? {
        for offer in headers.flatMap({ $0.split(separator: ",") }) {
            var parts = offer.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.first == "permessage-deflate" else { continue }
            parts.removeFirst()
            if let accepted = accept(parameters: parts) { return accepted }
        }
        return nil
    }

    /// An offer's parameters, or nil to decline it: unknown or repeated parameters, bad values,
    /// or a server window under 9 bits (zlib cannot compress with 256 bytes).
    private static func accept(parameters: [String]) -> PerMessageDeflate? {
        var seen = Set<String>()
        var serverBits: Int32?
        for parameter in parameters {
            let pair = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            let name = pair[0]
            let value = pair.count > 1 ? pair[1].trimmingCharacters(in: CharacterSet(charactersIn: "\"")) : nil
            guard seen.insert(name).inserted else { return nil }
            switch name {
            case "server_no_context_takeover", "client_no_context_takeover":
                guard value == nil else { return nil }
            case "server_max_window_bits":
                guard let value, let bits = Int32(value), (8...15).contains(bits), value.first != "0" else { return nil }
                guard bits >= 9 else { return nil }
                serverBits = bits
            case "client_max_window_bits":
                if let value {
                    guard let bits = Int32(value), (8...15).contains(bits), value.first != "0" else { return nil }
                }
            default:
                return nil
            }
        }
        var header = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        if let serverBits { header += "; server_max_window_bits=\(serverBits)" }
        return PerMessageDeflate(serverWindowBits: serverBits ?? 15, responseHeader: header)
    }

    // MARK: Compression

    /// The message compressed on its own (RFC 7692 §7.2.1: deflate, sync flush, the trailing
    /// 00 00 FF FF removed); nil when compression does not make it smaller.
    static func compress(_ input: ByteBuffer, windowBits: Int32) -> ByteBuffer? {
        var stream = z_stream()
        guard playback_deflate_init(&stream, Z_DEFAULT_COMPRESSION, -windowBits, 8) == Z_OK else { return nil }
        defer { deflateEnd(&stream) }
        let bound = Int(deflateBound(&stream, UInt(input.readableBytes))) + 16
        var output = ByteBuffer()
        var status: Int32 = Z_STREAM_ERROR
        var leftOver: uInt = 0
        _ = input.withUnsafeReadableBytes { source in
            output.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { target in
                stream.next_in = UnsafeMutablePointer(mutating: source.bindMemory(to: Bytef.self).baseAddress)
                stream.avail_in = uInt(source.count)
                stream.next_out = target.bindMemory(to: Bytef.self).baseAddress
                stream.avail_out = uInt(target.count)
                status = deflate(&stream, Z_SYNC_FLUSH)
                leftOver = stream.avail_in
                return target.count - Int(stream.avail_out)
            }
        }
        guard status == Z_OK, leftOver == 0, output.readableBytes >= 4 else { return nil }
        output.moveWriterIndex(to: output.writerIndex - 4)  // 00 00 FF FF
        return output.readableBytes < input.readableBytes ? output : nil
    }

    enum InflateError: Error {
        case tooBig, corrupt
    }

    /// Decompresses one message, refusing to produce more than `limit` bytes (a small frame can
    /// inflate to gigabytes).
    static func decompress(_ input: ByteBuffer, limit: Int) throws(InflateError) -> ByteBuffer {
        var stream = z_stream()
        guard playback_inflate_init(&stream, -15) == Z_OK else { throw .corrupt }
        defer { inflateEnd(&stream) }
        var payload = input
        payload.writeBytes([0x00, 0x00, 0xFF, 0xFF])
        var output = ByteBuffer()
        let chunk = 16_384
        var failure: InflateError?
        payload.withUnsafeReadableBytes { source in
            stream.next_in = UnsafeMutablePointer(mutating: source.bindMemory(to: Bytef.self).baseAddress)
            stream.avail_in = uInt(source.count)
            while failure == nil {
                var status: Int32 = Z_OK
                output.writeWithUnsafeMutableBytes(minimumWritableBytes: chunk) { target in
                    stream.next_out = target.bindMemory(to: Bytef.self).baseAddress
                    stream.avail_out = uInt(min(target.count, chunk))
                    let before = Int(stream.avail_out)
                    status = inflate(&stream, Z_SYNC_FLUSH)
                    return before - Int(stream.avail_out)
                }
                if output.readableBytes > limit {
                    failure = .tooBig
                } else if status == Z_STREAM_END || (status == Z_OK && stream.avail_in == 0 && stream.avail_out > 0) {
                    return
                } else if status == Z_BUF_ERROR && stream.avail_in == 0 {
                    return
                } else if status != Z_OK && status != Z_BUF_ERROR {
                    failure = .corrupt
                }
            }
        }
        if let failure { throw failure }
        return output
    }
}

extension EncodedMessage {
    /// The message as a frame payload for a connection: compressed once per window size and
    /// shared by every connection that negotiated it, or the plain bytes.
    func payload(for deflate: PerMessageDeflate?) -> (bytes: ByteBuffer, compressed: Bool) {
        guard let deflate, bytes.readableBytes >= PerMessageDeflate.minimumSize else { return (bytes, false) }
        let plain = bytes
        let compressed = variants.value(for: Int(deflate.serverWindowBits)) {
            PerMessageDeflate.compress(plain, windowBits: deflate.serverWindowBits)
        }
        return compressed.map { ($0, true) } ?? (bytes, false)
    }
}
