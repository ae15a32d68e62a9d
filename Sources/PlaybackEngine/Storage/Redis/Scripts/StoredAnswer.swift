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

extension StoredAnswer {
    /// The form the minute hashes keep: `<version>` or `<version>:<entry>` for a success (the
    /// common case, a few bytes), the JSON form for an error.
    static func compact(_ answer: Result<Receipt, PlaybackError>) -> ByteBuffer {
        guard case .success(let receipt) = answer else { return json(answer) }
        var buffer = ByteBuffer(string: String(receipt.version))
        if let entry = receipt.entry {
            buffer.writeString(":")
            buffer.writeString(entry)
        }
        return buffer
    }

    /// Either form: JSON (errors, and every answer the previous release kept), or compact.
    static func read(_ stored: ByteBuffer) throws -> Result<Receipt, PlaybackError> {
        if stored.readableBytesView.first == UInt8(ascii: "{") { return try decode(stored) }
        let text = String(decoding: stored.readableBytesView, as: UTF8.self)
        let parts = text.split(separator: ":", maxSplits: 1)
        guard let first = parts.first, let version = Int64(first) else { throw Unreadable() }
        return .success(Receipt(version: version, entry: parts.count > 1 ? String(parts[1]) : nil, changed: false))
    }

    struct Unreadable: Error {}
}

/// The stretches of time a user's remembered answers are kept in: a tenth of the window each (a
/// minute for the default 10 minutes), one hash per stretch, looked up over the window's stretches
/// and the current one, each expiring the window after its stretch ends. An id is so remembered
/// for at least the window and at most a tenth longer. Every daemon must have the same window.
struct RequestBuckets: Equatable {
    /// The stretches to look in, oldest first; the current one (where new answers go) last.
    let buckets: [Int64]
    /// When the current stretch's hash expires, ms since the epoch.
    let currentExpiresAt: Int64

    init(windowMs: Int64, nowMs: Int64) {
        let window = max(windowMs, 1_000)
        let stretch = max(1_000, window / 10)
        let current = nowMs / stretch
        let span = (window + stretch - 1) / stretch
        buckets = Array((current - span)...current)
        currentExpiresAt = (current + 1) * stretch + window
    }
}
