import Foundation
import FuzzSupport
import NIOCore
import RedisClient

/// libFuzzer target for RESP replies as RedisClient reads them (hiredis's reader, then the copy
/// into `RESPValue`): any bytes, fed whole and then split at an input-chosen point, give the same
/// replies or a protocol error, never a crash or a leak.
///
/// Fuzzing: `scripts/fuzz resp`. Without FUZZING this is a replayer: `fuzz-resp FILE...`.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRESP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    let whole = replies(chunks: [bytes[...]])
    let split = bytes.isEmpty ? 0 : Int(bytes[0]) % (bytes.count + 1)
    let halves = replies(chunks: [bytes[..<split], bytes[split...]])
    precondition(whole == halves, "splitting the input changed the replies")
    return 0
}

/// The replies parsed from `chunks` fed one after another, and whether the parser rejected the rest.
private func replies(chunks: [ArraySlice<UInt8>]) -> [RESPValue?] {
    let parser = RESPParser()
    var values: [RESPValue?] = []
    for chunk in chunks {
        parser.feed(ByteBuffer(bytes: chunk))
        while true {
            do {
                guard let value = try parser.next() else { break }
                _ = value.description
                values.append(value)
                if values.count > 10_000 { return values }
            } catch {
                values.append(nil)
                return values
            }
        }
    }
    return values
}

@main
enum Main {
    static func main() { fuzzMain(fuzzRESP) }
}
