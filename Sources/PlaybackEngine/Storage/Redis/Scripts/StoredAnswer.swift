import Foundation
import NIOCore

/// A request's final answer as stored under `req:{u:ID}:<id>`.
struct StoredAnswer: Codable {
    var version: Int64?
    var entry: String?
    var error: ServerMessage.ErrorReply?

    init(_ answer: Result<Receipt, PlaybackError>) {
        switch answer {
        case .success(let receipt):
            version = receipt.version
            entry = receipt.entry
        case .failure(let error):
            self.error = ServerMessage.ErrorReply(id: nil, error: error)
        }
    }

    var result: Result<Receipt, PlaybackError> {
        if let error { return .failure(error.error) }
        return .success(Receipt(version: version ?? 0, entry: entry, changed: false))
    }

    static func decode(_ stored: ByteBuffer) throws -> Result<Receipt, PlaybackError> {
        try JSONDecoder().decode(StoredAnswer.self, from: Data(stored.readableBytesView)).result
    }

    /// A success is written by hand (it is on every command with an id); errors are rare.
    static func json(_ answer: Result<Receipt, PlaybackError>) -> ByteBuffer {
        if case .success(let receipt) = answer {
            var buffer = ByteBuffer(string: #"{"version":"#)
            buffer.writeString(String(receipt.version))
            if let entry = receipt.entry {
                buffer.writeString(#","entry":"#)
                buffer.writeBytes(ServerMessageJSON.encode(string: entry))
            }
            buffer.writeString("}")
            return buffer
        }
        // A StoredAnswer is plain strings and numbers: encoding it cannot fail.
        return (try? ByteBuffer(bytes: JSONEncoder().encode(StoredAnswer(answer)))) ?? ByteBuffer(string: "{}")
    }
}
