import NIOCore
import NIOWebSocket
import PlaybackCore
import Testing

@testable import SyncServer

@Suite("frame layer: UTF-8, assembly, rate")
struct FrameLayerTests {
    @Test(arguments: [
        ([UInt8](), true), (Array("héllo ✓ 𝄞".utf8), true),
        ([0xC0, 0xAF], false), ([0xE0, 0x80, 0xAF], false), ([0xED, 0xA0, 0x80], false),
        ([0xF4, 0x90, 0x80, 0x80], false), ([0xFF], false), ([0x80], false),
    ])
    func utf8Validation(bytes: [UInt8], valid: Bool) {
        var validator = UTF8Validator()
        let fed = validator.feed(bytes)
        #expect((fed && validator.isComplete) == valid)
    }

    @Test func utf8SequencesMaySpanFragments() {
        var validator = UTF8Validator()
        let clef = Array("𝄞".utf8)
        let first = validator.feed(clef.prefix(2))
        #expect(first && !validator.isComplete)
        let rest = validator.feed(clef.dropFirst(2))
        #expect(rest && validator.isComplete)
    }

    func frame(_ opcode: WebSocketOpcode, _ text: String, fin: Bool = true) -> WebSocketFrame {
        WebSocketFrame(fin: fin, opcode: opcode, maskKey: WebSocketMaskingKey([0, 0, 0, 0]), data: ByteBuffer(string: text))
    }

    @Test func fragmentsAreReassembledWithinTheLimit() {
        var assembler = FrameAssembler(maxMessageBytes: 10)
        let events = [
            assembler.receive(frame(.text, "abc", fin: false)), assembler.receive(frame(.ping, "p")),
            assembler.receive(frame(.continuation, "def")), assembler.receive(frame(.text, "0123456789")),
            assembler.receive(frame(.text, "01234", fin: false)), assembler.receive(frame(.continuation, "567890")),
        ]
        #expect(events == [
            .none, .ping(ByteBuffer(string: "p")), .text(ByteBuffer(string: "abcdef")), .text(ByteBuffer(string: "0123456789")),
            .none, .fail(.messageTooBig, "message larger than 10 bytes"),
        ], "control frames may interleave; the limit covers the reassembled message")
    }

    @Test func continuationWithoutAMessageAndNestedMessagesAreProtocolErrors() {
        var assembler = FrameAssembler(maxMessageBytes: 100)
        guard case .fail(.protocolError, _) = assembler.receive(frame(.continuation, "x")) else { Issue.record("accepted"); return }
        _ = assembler.receive(frame(.text, "a", fin: false))
        guard case .fail(.protocolError, _) = assembler.receive(frame(.text, "b")) else { Issue.record("accepted"); return }
    }

    @Test func closeFramesAreValidated() {
        var assembler = FrameAssembler(maxMessageBytes: 100)
        var payload = ByteBuffer()
        payload.writeInteger(UInt16(1000))
        payload.writeString("bye")
        let close = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .init([0, 0, 0, 0]), data: payload)
        let event = assembler.receive(close)
        #expect(event == .close(code: 1000, reason: "bye"))
        var reserved = ByteBuffer()
        reserved.writeInteger(UInt16(1005))
        guard case .fail(.protocolError, _) = assembler.receive(
            WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .init([0, 0, 0, 0]), data: reserved))
        else { Issue.record("1005 accepted"); return }
        let empty = assembler.receive(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .init([0, 0, 0, 0]), data: ByteBuffer()))
        #expect(empty == .close(code: nil, reason: ""))
    }

    @Test func tokenBucketAllowsBurstThenRate() {
        var bucket = TokenBucket(rate: 10, burst: 3, nowNs: 0)
        let burst = (0..<3).map { _ in bucket.take(nowNs: 0).allowed }
        #expect(burst == [true, true, true])
        let refused = bucket.take(nowNs: 0)
        #expect(!refused.allowed && refused.retryAfterMs == 100)
        let refilled = bucket.take(nowNs: 100_000_000)
        let again = bucket.take(nowNs: 100_000_000)
        #expect(refilled.allowed && !again.allowed, "one token after 100 ms at 10/s")
    }
}
