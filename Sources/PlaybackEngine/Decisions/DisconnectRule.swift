/// What a device's disconnect does to the lease, decided from values.
///
/// Only the device's current connection, the one its directory entry names, speaks for it (`left`):
/// a newer one, on any node, its replacement notice still on the way, keeps the lease. Of the
/// holder's own connection: a close it asked for (1000/1001, `release`) ends the lease at once, a
/// loss starts the grace period (the lease lives on for `graceMs` unless it comes back), and a
/// replacement (4001) leaves the lease with the new connection.
enum DisconnectRule: Equatable {
    /// The lease ends now (a `release` on the holder's behalf).
    case release
    /// The lease lives on for the grace period, from the moment of the loss.
    case grace
    /// Nothing changes.
    case keep

    static func decide(_ kind: DisconnectKind, left: Bool, heldLease: Bool) -> DisconnectRule {
        guard left, heldLease else { return .keep }
        switch kind {
        case .released: return .release
        case .lost: return .grace
        case .replaced: return .keep
        }
    }
}
