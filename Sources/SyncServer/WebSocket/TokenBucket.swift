/// A token bucket: `rate` messages per second on average, bursts up to `burst`.
struct TokenBucket {
    let rate: Double
    let burst: Double
    private var tokens: Double
    private var updatedNs: UInt64

    init(rate: Int, burst: Int, nowNs: UInt64) {
        self.rate = Double(max(rate, 1))
        self.burst = Double(max(burst, 1))
        self.tokens = self.burst
        self.updatedNs = nowNs
    }

    /// Takes a token; on refusal, how long until one is available.
    mutating func take(nowNs: UInt64) -> (allowed: Bool, retryAfterMs: Int64) {
        if nowNs > updatedNs {
            tokens = min(burst, tokens + Double(nowNs - updatedNs) / 1e9 * rate)
            updatedNs = nowNs
        }
        if tokens >= 1 {
            tokens -= 1
            return (true, 0)
        }
        return (false, Int64(((1 - tokens) / rate * 1_000).rounded(.up)))
    }
}
