import Foundation
import PlaybackCore
import Testing

/// When a client tries again: the server's hint in a close reason, and full-jitter backoff.
@Suite("reconnecting")
struct ReconnectingTests {
    @Test func aHintRoundTripsThroughACloseReasonOfAtMost123Bytes() {
        for reason in ["server going away", String(repeating: "é\"\\", count: 60), ""] {
            let text = Reconnecting.closeReason(reason, retryAfterMs: 4_321)
            #expect(text.utf8.count <= 123, "\(text.utf8.count) bytes")
            #expect(Reconnecting.retryAfterMs(inCloseReason: text) == 4_321, "\(text)")
        }
        #expect(Reconnecting.retryAfterMs(inCloseReason: "server going away") == nil)
        #expect(Reconnecting.retryAfterMs(inCloseReason: #"{"retry_after_ms":-5}"#) == nil)
        #expect(Reconnecting.retryAfterMs(inCloseReason: #"{"retry_after_ms":9999999}"#) == Reconnecting.maximumHintMs)
    }

    @Test func backoffDoublesWithFullJitterUnderItsCapAndNeverUndercutsTheHint() {
        #expect(Reconnecting.delayMs(attempt: 1, hintMs: nil, random: 1) == 250)
        #expect(Reconnecting.delayMs(attempt: 3, hintMs: nil, random: 1) == 1_000)
        #expect(Reconnecting.delayMs(attempt: 3, hintMs: nil, random: 0) == 0, "full jitter reaches zero")
        #expect(Reconnecting.delayMs(attempt: 40, hintMs: nil, random: 1) == 15_000, "capped")
        #expect(Reconnecting.delayMs(attempt: 1, hintMs: 3_000, random: 0.5) == 3_000, "the hint is a floor")
        #expect(Reconnecting.delayMs(attempt: 9, hintMs: 100, random: 1) == 15_000)
    }
}
