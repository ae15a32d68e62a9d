// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "playback-sync",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "PlaybackCore", targets: ["PlaybackCore"]),
        .library(name: "PlaybackEngine", targets: ["PlaybackEngine"]),
        .library(name: "SyncServer", targets: ["SyncServer"]),
        .library(name: "DeviceSimKit", targets: ["DeviceSimKit"]),
        .executable(name: "playback-syncd", targets: ["playback-syncd"]),
        .executable(name: "device-sim", targets: ["device-sim"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.0"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.7.1"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.24.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        // OTLP over HTTP only: the gRPC exporter would add grpc-swift to every build.
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
    ],
    targets: [
        // Pure model: player state, commands, the reducer, the wire messages. Foundation only.
        .target(name: "PlaybackCore"),
        // hiredis (apt libhiredis-dev), as a system library: only RedisClient imports it. Its headers are
        // included by path (see shim.h) rather than through pkg-config, whose flags SwiftPM warns about.
        .systemLibrary(name: "CHiredis", providers: [.apt(["libhiredis-dev"])]),
        // zlib (apt zlib1g-dev), for permessage-deflate.
        .systemLibrary(name: "CZlib", providers: [.apt(["zlib1g-dev"])]),
        // Async Redis client on SwiftNIO; hiredis formats commands and parses replies.
        .target(
            name: "RedisClient",
            dependencies: [
                "CHiredis",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // PostgreSQL: migrations, catalog and licensing, snapshots, play history (postgres-nio).
        .target(
            name: "PlaybackStore",
            dependencies: [
                "PlaybackCore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // The engine contract and its implementations (MemoryEngine: single node, no dependencies).
        .target(
            name: "PlaybackEngine",
            dependencies: [
                "PlaybackCore", "RedisClient", "PlaybackStore",
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // The daemon as a library: WebSocket sessions, REST, auth, limits, metrics, config.
        .target(
            name: "SyncServer",
            dependencies: [
                "PlaybackCore", "PlaybackEngine", "PlaybackStore", "RedisClient", "CZlib",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "OTel", package: "swift-otel"),
            ],
            resources: [.copy("Web/Resources")]
        ),
        .executableTarget(
            name: "playback-syncd",
            dependencies: [
                "SyncServer", "PlaybackEngine", "RedisClient", "PlaybackStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The client side: a simulated device, one-shot commands, the load driver.
        .target(
            name: "DeviceSimKit",
            dependencies: [
                "PlaybackCore",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // What Redis and PostgreSQL hold, for `device-sim swarm --check` and the fault tests.
        .target(
            name: "StoreInspection",
            dependencies: ["DeviceSimKit", "RedisClient", "PlaybackStore", .product(name: "Logging", package: "swift-log")]
        ),
        .executableTarget(
            name: "device-sim",
            dependencies: [
                "DeviceSimKit", "StoreInspection", "PlaybackCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // libFuzzer targets (scripts/fuzz); built normally they replay files given as arguments.
        .target(name: "FuzzSupport"),
        .executableTarget(name: "fuzz-messages", dependencies: ["PlaybackCore", "FuzzSupport"]),
        .executableTarget(name: "fuzz-resp", dependencies: ["RedisClient", "FuzzSupport", .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(name: "PlaybackCoreTests", dependencies: ["PlaybackCore"]),
        // The engine's decisions over values: no socket, no server.
        .testTarget(name: "PlaybackEngineTests", dependencies: ["PlaybackEngine", "PlaybackCore"]),
        .testTarget(
            name: "RedisClientTests",
            dependencies: [
                "RedisClient",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "SyncServerTests",
            dependencies: [
                "SyncServer", "PlaybackEngine", "PlaybackCore", "DeviceSimKit", "StoreInspection", "RedisClient", "PlaybackStore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
