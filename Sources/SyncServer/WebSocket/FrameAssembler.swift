import NIOCore
import NIOWebSocket
import PlaybackCore

/// Turns the client's WebSocket frames into whole text messages and control events, enforcing
/// what RFC 6455 and the protocol require of them: masking, no reserved bits or opcodes,
/// text only, valid UTF-8 (checked fragment by fragment), a bounded message size, and
/// well-formed close frames. It does no IO; the session acts on what it returns.
struct FrameAssembler {
    enum Event: Equatable {
        case none
        case text(ByteBuffer)
        /// Only when binary messages are accepted (the diagnostics echo).
        case binary(ByteBuffer)
        case ping(ByteBuffer)
        case pong
        /// The peer's close frame: its code (nil when it had none) and reason.
        case close(code: UInt16?, reason: String)
        /// The connection must be closed with this code.
        case fail(CloseCode, String)
    }

    let maxMessageBytes: Int
    /// `/v1/connect` speaks JSON text only (binary closes with 1003); the diagnostics echo takes both.
    let acceptsBinary: Bool
    /// permessage-deflate was negotiated: RSV1 on a message's first frame means it is compressed.
    let inflates: Bool
    private var message: ByteBuffer?
    private var messageIsText = true
    private var messageIsCompressed = false
    private var validator = UTF8Validator()

    init(maxMessageBytes: Int, acceptsBinary: Bool = false, inflates: Bool = false) {
        self.maxMessageBytes = maxMessageBytes
        self.acceptsBinary = acceptsBinary
        self.inflates = inflates
    }

    mutating func receive(_ frame: WebSocketFrame) -> Event {
        guard frame.maskKey != nil else { return .fail(.protocolError, "client frames must be masked") }
        guard !frame.rsv2, !frame.rsv3 else { return .fail(.protocolError, "reserved bits set") }
        if frame.rsv1 {
            guard inflates, frame.opcode == .text || frame.opcode == .binary else {
                return .fail(.protocolError, inflates ? "RSV1 set on a frame that is not a message's first" : "reserved bits set")
            }
        }
        switch frame.opcode {
        case .text:
            guard message == nil else { return .fail(.protocolError, "a new message started inside a fragmented one") }
            messageIsText = true
            messageIsCompressed = frame.rsv1
            return append(frame, first: true)
        case .continuation:
            guard message != nil else { return .fail(.protocolError, "continuation frame without a message") }
            return append(frame, first: false)
        case .binary:
            guard message == nil else { return .fail(.protocolError, "a new message started inside a fragmented one") }
            guard acceptsBinary else { return .fail(.unsupportedData, "binary messages are not supported; send JSON text") }
            messageIsText = false
            messageIsCompressed = frame.rsv1
            return append(frame, first: true)
        case .ping:
            return .ping(frame.unmaskedData)
        case .pong:
            return .pong
        case .connectionClose:
            return closeFrame(frame.unmaskedData)
        default:
            return .fail(.protocolError, "reserved opcode")
        }
    }

    private mutating func append(_ frame: WebSocketFrame, first: Bool) -> Event {
        var data = frame.unmaskedData
        let size = (message?.readableBytes ?? 0) + data.readableBytes
        guard size <= maxMessageBytes else {
            message = nil
            return .fail(.messageTooBig, "message larger than \(maxMessageBytes) bytes")
        }
        if messageIsText, !messageIsCompressed, !validator.feed(data.readableBytesView) {
            message = nil
            return .fail(.invalidPayload, "text is not valid UTF-8")
        }
        if first, frame.fin {
            return complete(data)
        }
        if message == nil {
            message = data
        } else {
            message?.writeBuffer(&data)
        }
        guard frame.fin, let whole = message else { return .none }
        message = nil
        return complete(whole)
    }

    private mutating func complete(_ received: ByteBuffer) -> Event {
        defer { validator = UTF8Validator() }
        var data = received
        if messageIsCompressed {
            messageIsCompressed = false
            do {
                data = try PerMessageDeflate.decompress(received, limit: maxMessageBytes)
            } catch .tooBig {
                return .fail(.messageTooBig, "message larger than \(maxMessageBytes) bytes once decompressed")
            } catch {
                return .fail(.invalidPayload, "the compressed message is not valid deflate data")
            }
            if messageIsText, !validator.feed(data.readableBytesView) {
                return .fail(.invalidPayload, "text is not valid UTF-8")
            }
        }
        guard messageIsText else { return .binary(data) }
        guard validator.isComplete else { return .fail(.invalidPayload, "text is not valid UTF-8") }
        return .text(data)
    }

    private func closeFrame(_ payload: ByteBuffer) -> Event {
        var payload = payload
        guard payload.readableBytes != 1 else { return .fail(.protocolError, "close frame with a one-byte payload") }
        guard let code = payload.readInteger(as: UInt16.self) else { return .close(code: nil, reason: "") }
        guard Self.isValidCloseCode(code) else { return .fail(.protocolError, "invalid close code \(code)") }
        var validator = UTF8Validator()
        guard validator.feed(payload.readableBytesView), validator.isComplete else {
            return .fail(.invalidPayload, "close reason is not valid UTF-8")
        }
        return .close(code: code, reason: payload.readString(length: payload.readableBytes) ?? "")
    }

    /// Codes a peer may send (RFC 6455 §7.4).
    static func isValidCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1011, 3000...4999: true
        default: false
        }
    }
}
