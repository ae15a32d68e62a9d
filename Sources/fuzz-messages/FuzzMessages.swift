import Foundation
import FuzzSupport
import PlaybackCore

/// libFuzzer target for the bytes a client sends (and, in device-sim, the server): decoding must
/// answer every input with a message or a typed rejection, and whatever decodes must encode and
/// decode again to the same message.
///
/// Fuzzing: `scripts/fuzz messages` (built with `-sanitize=fuzzer,address -DFUZZING`). Without
/// FUZZING this is a replayer: `fuzz-messages FILE...` runs each file through the same checks.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMessages(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    let codec = MessageCodec()
    switch codec.decodeClientMessage(bytes) {
    case .success(let message):
        guard let encoded = try? codec.encode(message) else { fatalError("a decoded client message does not encode: \(message)") }
        guard case .success(let again) = codec.decodeClientMessage(encoded), again == message else {
            fatalError("a client message changed in an encode/decode round trip: \(message)")
        }
    case .failure(let rejection):
        precondition(rejection.error.message.isEmpty == false, "a rejection without a message")
    }
    _ = codec.requestID(in: bytes)
    if let message = try? codec.decodeServerMessage(bytes) {
        guard let encoded = try? codec.encode(message), let again = try? codec.decodeServerMessage(encoded), again == message else {
            fatalError("a server message changed in an encode/decode round trip: \(message)")
        }
    }
    return 0
}

@main
enum Main {
    static func main() { fuzzMain(fuzzMessages) }
}
