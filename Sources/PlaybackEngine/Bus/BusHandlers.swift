import Synchronization

/// Where a storage hands the bus's frames, and whom it tells when frames may have been lost.
///
/// A class with constant members on purpose: a closure kept in a `Mutex`'s value is reabstracted
/// on every `withLock` (the value is accessed `inout`) and written back wrapped in two more
/// thunks; read once per frame, the chain grew until the stack overflowed.
final class BusHandlers: Sendable {
    let frame: @Sendable (_ user: String, _ frame: BusMessage) -> Void
    /// Frames of these users (nil: of every user) may have been lost.
    let resubscribed: @Sendable (_ users: [String]?) -> Void

    init(frame: @escaping @Sendable (String, BusMessage) -> Void, resubscribed: @escaping @Sendable ([String]?) -> Void) {
        self.frame = frame
        self.resubscribed = resubscribed
    }

    /// Where a storage keeps its handlers once it is started.
    final class Slot: Sendable {
        private let handlers = Mutex<BusHandlers?>(nil)

        var current: BusHandlers? {
            get { handlers.withLock { $0 } }
            set { handlers.withLock { $0 = newValue } }
        }
    }
}
