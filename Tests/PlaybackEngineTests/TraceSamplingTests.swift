@testable import PlaybackEngine
import Testing

/// Which commands start a trace when no caller decided (`CommandTracing.keepsRoot`), over values.
@Suite("trace sampling")
struct TraceSamplingTests {
    @Test(arguments: [0.0, 0.01, 0.1, 0.5, 1.0])
    func theShareKeptIsTheRatioSpreadOverTheSequence(ratio: Double) {
        let threshold = CommandTracing.threshold(ratio: ratio)
        let steps = 100_000
        let kept = (1...UInt64(steps)).filter { CommandTracing.keeps(step: $0, threshold: threshold) || threshold == .max }
        let share = Double(kept.count) / Double(steps)
        #expect(abs(share - ratio) <= 0.002, "kept \(share) of commands at ratio \(ratio)")
        // Spread, not bunched: every window of 1,000 commands keeps about its share.
        if ratio > 0, ratio < 1 {
            for window in stride(from: 0, to: steps, by: 1_000) {
                let inWindow = kept.filter { Int($0) > window && Int($0) <= window + 1_000 }.count
                #expect(abs(Double(inWindow) - ratio * 1_000) <= max(3, ratio * 100), "window at \(window): \(inWindow)")
            }
        }
    }
}
