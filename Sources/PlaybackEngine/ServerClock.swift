import Foundation

/// Server time in milliseconds since the Unix epoch.
public enum ServerClock {
    @Sendable public static func nowMs() -> Int64 {
        Int64((Date().timeIntervalSince1970 * 1_000).rounded(.down))
    }
}
