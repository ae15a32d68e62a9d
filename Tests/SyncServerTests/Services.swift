import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import PlaybackEngine
import PlaybackStore
import Synchronization
import Testing

/// Runs a program to completion; returns its exit code and output (stdout and stderr together).
/// `capture: false` for programs that leave a daemon behind holding their output open (pg_ctl start).
@discardableResult
func runProgram(_ path: String, _ arguments: [String], capture: Bool = true) throws -> (code: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    process.currentDirectoryURL = URL(fileURLWithPath: "/")
    guard capture else { return (spawnAndWait(path, arguments), "") }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// posix_spawn and waitpid, output to /dev/null. Foundation's `waitUntilExit` never returns for a
/// program that leaves a daemon behind (`pg_ctl start`): the daemon inherits what it waits on.
/// Descriptors above stderr are closed in the child (see `ChildProcess`).
func spawnAndWait(_ path: String, _ arguments: [String]) -> Int32 {
    guard let child = try? ChildProcess(path, arguments), case .exited(let code) = child.wait() else { return -1 }
    return code
}

/// PostgreSQL refuses to run as root: commands run as the postgres user then.
func asPostgres(_ program: String, _ arguments: [String], capture: Bool = true) throws -> (code: Int32, output: String) {
    if getuid() == 0 { return try runProgram("/usr/sbin/runuser", ["-u", "postgres", "--", program] + arguments, capture: capture) }
    return try runProgram(program, arguments, capture: capture)
}

enum PostgresBinaries {
    static let directory: String = {
        let root = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root))?.sorted() ?? []
        return versions.last.map { "\(root)/\($0)/bin" } ?? "/usr/bin"
    }()

    static func path(_ name: String) -> String { "\(directory)/\(name)" }
}

/// The PostgreSQL server `scripts/test` starts, and a scratch database on it per test.
struct TestDatabase: Sendable {
    static let serverURL = ProcessInfo.processInfo.environment["PLAYBACK_POSTGRES_URL"] ?? "postgres://playback@127.0.0.1:5440/playback"

    let name: String
    let settings: PostgresSettings

    /// Creates an empty database owned by the server's `playback` role.
    static func create() async throws -> TestDatabase {
        try await offloaded { try makeDatabase() }
    }

    private static func makeDatabase() throws -> TestDatabase {
        let server = try PostgresSettings(url: serverURL)
        let name = "pbt_" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let result = try runProgram(PostgresBinaries.path("psql"), [
            "-h", server.host, "-p", String(server.port), "-U", "postgres", "-d", "postgres", "-qtA",
            "-c", "CREATE DATABASE \(name) OWNER \(server.user)",
        ])
        guard result.code == 0 else { throw TestFailure("could not create database \(name): \(result.output)") }
        var settings = server
        settings.database = name
        return TestDatabase(name: name, settings: settings)
    }

    func drop() {
        _ = try? runProgram(PostgresBinaries.path("psql"), [
            "-h", settings.host, "-p", String(settings.port), "-U", "postgres", "-d", "postgres", "-qtA",
            "-c", "DROP DATABASE IF EXISTS \(name) WITH (FORCE)",
        ])
    }

    /// Runs SQL as the database's owner and returns psql's unaligned output (on a thread of its
    /// own: a blocking wait on one of the two cooperative threads would stall every other test).
    func sql(_ statement: String) async throws -> String {
        let (name, settings) = (self.name, self.settings)
        return try await offloaded { try Self.psql(statement, database: name, settings: settings) }
    }

    private static func psql(_ statement: String, database name: String, settings: PostgresSettings) throws -> String {
        let result = try runProgram(PostgresBinaries.path("psql"), [
            "-h", settings.host, "-p", String(settings.port), "-U", settings.user, "-d", name, "-qtA", "-F", "|", "-c", statement,
        ])
        guard result.code == 0 else { throw TestFailure("psql failed: \(result.output)") }
        return result.output.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// A store with its pool running, a write-behind queue and its loop: what the daemon wires up.
final class TestStore: Sendable {
    let store: PlaybackStore
    let writer: WriteBehind
    let durability: Durability
    private let tasks: [Task<Void, Never>]

    init(settings: PostgresSettings, snapshotIntervalMs: Int64 = 1_000, migrate: Bool = true, timeout: Duration = .seconds(2)) async throws {
        var settings = settings
        settings.timeout = timeout
        var logger = Logger(label: "test-store")
        logger.logLevel = ProcessInfo.processInfo.environment["TEST_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) } ?? .critical
        store = PlaybackStore(settings: settings, logger: logger)
        var limits = WriteBehind.Limits()
        limits.snapshotIntervalMs = snapshotIntervalMs
        limits.tickMs = 50
        limits.maxBackoffMs = 500
        writer = WriteBehind(store: store, limits: limits, logger: logger)
        durability = Durability(writer: writer, logger: logger)
        let store = self.store
        let writer = self.writer
        tasks = [Task { await store.run() }, Task { await writer.run() }]
        if migrate { try await store.migrate() }
    }

    /// Seeds the built-in demo catalog (300 tracks) and returns it as PostgreSQL serves it.
    func seededCatalog() async throws -> CachedCatalog {
        try await store.replaceCatalog(DemoCatalog.make())
        return try await CachedCatalog(store: store)
    }

    func close() {
        for task in tasks { task.cancel() }
    }
}

/// A redis-server of the test's own (no persistence), to restart in the middle of a test.
final class RedisProcess: @unchecked Sendable {
    let port: Int
    private var process: ChildProcess?

    init() throws {
        port = try ListenPorts.pick()
        try start()
    }

    var url: String { "redis://127.0.0.1:\(port)/0" }

    func start() throws {
        process = try ChildProcess(
            "/usr/bin/redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", "/tmp"])
        for _ in 0..<100 {
            if (try? runProgram("/usr/bin/redis-cli", ["-p", String(port), "ping"]))?.output.contains("PONG") == true { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw TestFailure("redis-server on port \(port) did not start")
    }

    /// kill -9: everything it held is gone.
    func kill() {
        guard let process else { return }
        process.signal(SIGKILL)
        _ = process.wait()
        self.process = nil
    }

    deinit { kill() }
}

/// A PostgreSQL cluster of the test's own, to stop and start in the middle of a test.
final class PostgresProcess: @unchecked Sendable {
    let port: Int
    let directory: String

    /// initdb, then start on a free port; a port taken between the check and the server's bind
    /// (another process got there first) is retried on another one.
    init() throws {
        directory = "/var/tmp/pbt-pg-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        if getuid() == 0 { _ = try runProgram("/bin/chown", ["postgres:postgres", directory]) }
        let initdb = try asPostgres(PostgresBinaries.path("initdb"), ["-D", directory, "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        guard initdb.code == 0 else { throw TestFailure("initdb failed: \(initdb.output)") }
        var attempt = 1
        while true {
            let port = try ListenPorts.pick()
            do {
                try Self.start(directory: directory, port: port)
                self.port = port
                return
            } catch where attempt < 3 {
                attempt += 1
            }
        }
    }

    var settings: PostgresSettings {
        get throws { try PostgresSettings(url: "postgres://postgres@127.0.0.1:\(port)/postgres") }
    }

    func start() throws { try Self.start(directory: directory, port: port) }

    private static func start(directory: String, port: Int) throws {
        let log = "\(directory)/server.log"
        let result = try asPostgres(PostgresBinaries.path("pg_ctl"), [
            "-D", directory, "-l", log, "-w", "-t", "30",
            "-o", "-p \(port) -k \(directory) -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        ], capture: false)
        guard result.code == 0 else {
            let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? "(no server.log)"
            throw TestFailure("pg_ctl start on port \(port) failed: \(output.suffix(2_000))")
        }
    }

    func stop() throws {
        let result = try asPostgres(PostgresBinaries.path("pg_ctl"), ["-D", directory, "-m", "immediate", "-w", "stop"])
        guard result.code == 0 else { throw TestFailure("pg_ctl stop failed: \(result.output)") }
    }

    func destroy() {
        _ = try? asPostgres(PostgresBinaries.path("pg_ctl"), ["-D", directory, "-m", "immediate", "-w", "stop"])
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Listening ports for the servers tests start: outside the kernel's ephemeral range (where the
/// local ends of the tests' own outgoing connections would take them), free when picked (bind
/// without SO_REUSEADDR, so TIME_WAIT counts as taken), and never the same twice in one process.
enum ListenPorts {
    private static let handedOut = Mutex<Set<Int>>([])

    static func pick() throws -> Int {
        let candidates = range
        for _ in 0..<200 {
            let port = Int.random(in: candidates)
            guard isFree(port), handedOut.withLock({ $0.insert(port).inserted }) else { continue }
            return port
        }
        throw TestFailure("no free port in \(candidates)")
    }

    /// Below the ephemeral range when there is room, above it otherwise.
    private static var range: ClosedRange<Int> {
        let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
        let bounds = text.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        let low = bounds.first ?? 32_768, high = bounds.last ?? 60_999
        if low > 12_000 { return 10_000...(low - 1) }
        return min(high + 1, 64_000)...65_000
    }

    static func isFree(_ port: Int) -> Bool {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Whole milliseconds from `start` until now: the upper bound for what a timed test may observe.
func milliseconds(since start: ContinuousClock.Instant) -> Int64 {
    let elapsed = (ContinuousClock.now - start).components
    return elapsed.seconds * 1_000 + elapsed.attoseconds / 1_000_000_000_000_000
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(50))
    }
    return try await condition()
}

/// Runs blocking work (starting and stopping processes, waiting for them) on a thread of its own,
/// so that it does not hold one of the few threads Swift concurrency runs every test's tasks on.
func offloaded<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try work() }) }
    }
}

/// A child process started with posix_spawn, every descriptor above stderr closed in it: a child
/// that inherited the test process's sockets (the server side of a test's WebSocket) would keep
/// them open after the test closed them, and the peer would never see the close.
final class ChildProcess: Sendable {
    enum Termination: Sendable, Equatable {
        case exited(Int32)
        case signaled(Int32)
    }

    let pid: pid_t
    private let termination = Mutex<Termination?>(nil)

    /// Starts `path`; its output goes to `output` (a file, appended) or /dev/null. `pipes` instead
    /// connects its standard input and output to the given descriptors (stderr to /dev/null).
    init(_ path: String, _ arguments: [String], output: String? = nil, pipes: (input: Int32, output: Int32)? = nil) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let pipes {
            posix_spawn_file_actions_adddup2(&actions, pipes.input, 0)
            posix_spawn_file_actions_adddup2(&actions, pipes.output, 1)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 1, output ?? "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0o644)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        closeDescriptorsFromThree(&actions)
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        // The child starts with no signal blocked and the usual dispositions, whatever the
        // spawning thread had (a shell that inherited a blocked SIGTERM would never stop).
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let result = posix_spawn(&pid, path, &actions, &attributes, argv, environ)
        guard result == 0 else { throw TestFailure("posix_spawn \(path) failed: \(String(cString: strerror(result)))") }
        self.pid = pid
    }

    func signal(_ signal: Int32) {
        guard termination.withLock({ $0 == nil }) else { return }
        kill(pid, signal)
    }

    var isRunning: Bool { poll() == nil }

    /// How it ended, waiting at most `seconds` (nil: as long as it takes); nil while it still runs.
    func wait(seconds: Double? = nil) -> Termination? {
        let deadline = seconds.map { Date().addingTimeInterval($0) }
        while true {
            if let ended = poll() { return ended }
            if let deadline, Date() >= deadline { return nil }
            Thread.sleep(forTimeInterval: 0.02)
        }
    }

    private func poll() -> Termination? {
        termination.withLock { termination in
            if let termination { return termination }
            var status: Int32 = 0
            guard waitpid(pid, &status, WNOHANG) == pid else { return nil }
            let signal = status & 0x7f
            termination = signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
            return termination
        }
    }
}

/// `posix_spawn_file_actions_addclosefrom_np(actions, 3)` (glibc 2.34+), which the Glibc module
/// does not export.
func closeDescriptorsFromThree(_ actions: inout posix_spawn_file_actions_t) {
    typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return }
    _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3)
}
