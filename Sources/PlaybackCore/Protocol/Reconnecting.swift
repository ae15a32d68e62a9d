import Foundation

/// When a client should try again after a close: the server's hint, carried in the close frame's
/// reason as `{"reason":"…","retry_after_ms":N}` (with 1001 while a server drains, 1013 while it is
/// overloaded), and the client's own exponential backoff with full jitter (PROTOCOL.md, section 9).
public enum Reconnecting {
    /// A close reason with a retry hint; within the 123 bytes a close frame's reason may take.
    public static func closeReason(_ reason: String, retryAfterMs: Int64) -> String {
        let hint = max(0, retryAfterMs)
        var text = reason
        while !text.isEmpty {
            if let data = try? JSONSerialization.data(withJSONObject: ["reason": text, "retry_after_ms": hint], options: [.sortedKeys]),
                data.count <= 123
            {
                return String(decoding: data, as: UTF8.self)
            }
            text.removeLast()
        }
        return #"{"retry_after_ms":\#(hint)}"#
    }

    /// The hint in a close reason, if it carries one (any other reason is plain text: none).
    public static func retryAfterMs(inCloseReason reason: String) -> Int64? {
        guard reason.hasPrefix("{"), let object = try? JSONSerialization.jsonObject(with: Data(reason.utf8)) as? [String: Any],
            let value = object["retry_after_ms"] as? NSNumber
        else { return nil }
        let ms = value.int64Value
        return ms >= 0 ? min(ms, maximumHintMs) : nil
    }

    /// The longest a hint is obeyed; a larger one is read as this.
    public static let maximumHintMs: Int64 = 60_000

    /// The wait before reconnect attempt `attempt` (1 for the first after a loss): uniform in
    /// `[0, min(capMs, baseMs × 2^(attempt-1))]` (full jitter), and never less than the server's hint.
    public static func delayMs(attempt: Int, hintMs: Int64?, baseMs: Int64 = 250, capMs: Int64 = 15_000, random: Double) -> Int64 {
        let ceiling = min(capMs, baseMs << Int64(min(max(attempt - 1, 0), 20)))
        let jittered = Int64((Double(ceiling) * min(max(random, 0), 1)).rounded())
        return max(jittered, hintMs ?? 0)
    }
}
