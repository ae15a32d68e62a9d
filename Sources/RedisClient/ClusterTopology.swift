/// Where a Redis Cluster keeps its keys: 16,384 hash slots, each served by one master.
public enum HashSlot {
    public static let count = 16_384

    /// The slot of a key, as Redis computes it: CRC16 (XMODEM) of the key, or of its hash tag
    /// (the part between the first `{` and the next `}`, when that part is not empty), mod 16,384.
    public static func of(_ key: String) -> Int {
        of(Array(key.utf8))
    }

    public static func of(_ key: [UInt8]) -> Int {
        var hashed = key[...]
        if let open = key.firstIndex(of: UInt8(ascii: "{")),
            let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1
        {
            hashed = key[(open + 1)..<close]
        }
        return Int(crc16(hashed) & 0x3FFF)
    }

    /// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as in Redis's `crc16.c`.
    static func crc16(_ bytes: ArraySlice<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc = (crc << 8) ^ table[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ byte)]
        }
        return crc
    }

    private static let table: [UInt16] = (0..<256).map { index in
        var crc = UInt16(index) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }
}

/// A cluster node's address, as `CLUSTER SLOTS` and redirects name it.
public struct RedisNodeAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `host:port` (as in a `MOVED 3999 127.0.0.1:6381` reply); IPv6 hosts keep their colons.
    public init?(_ text: Substring) {
        guard let colon = text.lastIndex(of: ":"), let number = Int(text[text.index(after: colon)...]), number > 0, colon > text.startIndex
        else { return nil }
        host = String(text[..<colon])
        port = number
    }

    public var description: String { "\(host):\(port)" }
}

/// Which master serves each slot, from `CLUSTER SLOTS`.
public struct ClusterTopology: Sendable, Equatable {
    /// The master of each slot (nil: no master covers it, the cluster is down for those keys).
    private(set) var masters: [RedisNodeAddress?]

    public init() { masters = Array(repeating: nil, count: HashSlot.count) }

    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …], replicas…], …]`.
    /// An empty host (a node that does not know its own address) means the node that answered.
    public init(slots reply: RESPValue, answeredBy: RedisNodeAddress) throws(RedisError) {
        self.init()
        guard case .array(let ranges) = reply else { throw RedisError(.protocolError, "CLUSTER SLOTS: not an array: \(reply)") }
        for range in ranges {
            guard case .array(let parts) = range, parts.count >= 3, let start = parts[0].int, let end = parts[1].int,
                start >= 0, end < HashSlot.count, start <= end, case .array(let master) = parts[2], master.count >= 2,
                let port = master[1].int
            else { throw RedisError(.protocolError, "CLUSTER SLOTS: unreadable range \(range)") }
            let host = master[0].string.flatMap { $0.isEmpty || $0 == "?" ? nil : $0 } ?? answeredBy.host
            let address = RedisNodeAddress(host: host, port: Int(port))
            for slot in Int(start)...Int(end) { masters[slot] = address }
        }
    }

    public func master(ofSlot slot: Int) -> RedisNodeAddress? { masters[slot] }

    public func master(of key: String) -> RedisNodeAddress? { masters[HashSlot.of(key)] }

    /// Every master that serves at least one slot.
    public var allMasters: Set<RedisNodeAddress> { Set(masters.compactMap { $0 }) }

    /// Slots no master serves.
    public var uncovered: Int { masters.lazy.filter { $0 == nil }.count }

    /// A redirect said where the slot lives now.
    mutating func move(slot: Int, to address: RedisNodeAddress) {
        guard slot >= 0, slot < HashSlot.count else { return }
        masters[slot] = address
    }
}

/// A redirect in an error reply: `MOVED <slot> <host:port>` (the slot lives elsewhere for good)
/// or `ASK <slot> <host:port>` (this one key is being migrated: ask there, once, after `ASKING`).
enum ClusterRedirect: Equatable {
    case moved(slot: Int, to: RedisNodeAddress)
    case ask(slot: Int, to: RedisNodeAddress)
    /// `TRYAGAIN`: a multi-key command whose keys are split by a migration in progress.
    case tryAgain
    /// `CLUSTERDOWN`: the cluster cannot serve the slot right now (a failover in progress).
    case down

    init?(_ reply: RESPValue) {
        guard case .error(let message) = reply else { return nil }
        if message.hasPrefix("TRYAGAIN") {
            self = .tryAgain
            return
        }
        if message.hasPrefix("CLUSTERDOWN") {
            self = .down
            return
        }
        let parts = message.split(separator: " ")
        guard parts.count == 3, let slot = Int(parts[1]), let address = RedisNodeAddress(parts[2]) else { return nil }
        switch parts[0] {
        case "MOVED": self = .moved(slot: slot, to: address)
        case "ASK": self = .ask(slot: slot, to: address)
        default: return nil
        }
    }
}
