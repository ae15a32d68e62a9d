import PlaybackCore
import Testing

@Suite("decoding client messages")
struct MessageCodecTests {
    func reject(_ text: String) -> MessageCodec.Rejection? {
        switch MessageCodec().decodeClientMessage(Array(text.utf8)) {
        case .success: nil
        case .failure(let rejection): rejection
        }
    }

    @Test(arguments: [
        ("not json", PlaybackError.Code.badRequest, nil as String?),
        ("[1,2]", .badRequest, nil),
        ("{}", .badRequest, nil),
        (#"{"type":5}"#, .badRequest, nil),
        (#"{"type":"dance"}"#, .badRequest, nil),
        (#"{"type":"command","id":"r1","op":"explode"}"#, .unknownOp, "r1"),
        (#"{"type":"command","id":"r2","op":"seek","args":{"position_ms":"60"}}"#, .badRequest, "r2"),
        (#"{"type":"command","id":"r3","op":"seek"}"#, .badRequest, "r3"),
        (#"{"type":"command","id":"r4","op":"volume","args":{"percent":40.5}}"#, .badRequest, "r4"),
        (#"{"type":"command","id":"r5","op":"seek","args":{"position_ms":1e300}}"#, .badRequest, "r5"),
        (#"{"type":"command","id":"r6","op":"repeat","args":{"mode":"sometimes"}}"#, .badRequest, "r6"),
        (#"{"type":"command","op":"pause"}"#, .badRequest, nil),
        (#"{"type":"command","id":7,"op":"pause"}"#, .badRequest, nil),
        (#"{"type":"hello","device":{"id":"bad id","name":"x","kind":"tv"}}"#, .badRequest, nil),
        (#"{"type":"hello","device":{"id":"ok","name":"x","kind":"toaster"}}"#, .badRequest, nil),
        (#"{"type":"hello","device":{"id":"ok","name":"x","kind":"tv"},"capabilities":"transfer_confirm"}"#, .badRequest, nil),
        (#"{"type":"hello","device":{"id":"ok","name":"x","kind":"tv"},"capabilities":[""]}"#, .badRequest, nil),
        (#"{"type":"hello","device":{"id":"ok","name":"x","kind":"tv"},"capabilities":["c0","c1","c2","c3","c4","c5","c6","c7","c8","c9","c10","c11","c12","c13","c14","c15","c16"]}"#, .badRequest, nil),
        (#"{"type":"report","epoch":-1.5,"position_ms":0,"is_playing":true,"track_id":"t"}"#, .badRequest, nil),
        (#"{"type":"clock","t0":"now"}"#, .badRequest, nil),
    ])
    func malformedMessagesAreRejectedWithACode(text: String, code: PlaybackError.Code, id: String?) {
        let rejection = reject(text)
        #expect(rejection?.error.code == code)
        #expect(rejection?.requestID == id)
        #expect(rejection?.error.message.isEmpty == false)
    }

    @Test func errorMessagesNameTheField() {
        #expect(reject(#"{"type":"command","id":"r","op":"seek","args":{"position_ms":"x"}}"#)?.error.message
            == "args.position_ms has the wrong type (expected an integer)")
        #expect(reject(#"{"type":"command","id":"r","op":"seek","args":{}}"#)?.error.message == "args.position_ms is missing")
        #expect(reject("{}")?.error.message == "the message has no string type")
    }

    @Test func commandsDecodeToTypedOps() throws {
        let message = try MessageCodec().decodeClientMessage(
            Array(#"{"type":"command","id":"a","op":"queue_add","args":{"track_id":"t1"},"if_version":3}"#.utf8)
        ).get()
        #expect(message == .command(.init(id: "a", command: .queueAdd(trackID: "t1", at: .end), ifVersion: 3)))
        #expect(message.requestID == "a")
    }

    @Test func clockEchoesLargeIntegersExactly() throws {
        let message = try MessageCodec().decodeClientMessage(Array(#"{"type":"clock","t0":9007199254740993}"#.utf8)).get()
        #expect(message == .clock(t0: .integer(9_007_199_254_740_993)))
    }
}
