// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "playback-sync",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "PlaybackCore", targets: ["PlaybackCore"]),
        .executable(name: "playback-syncd", targets: ["playback-syncd"]),
    ],
    targets: [
        // Pure model: player state, commands, the reducer, the wire messages. Foundation only.
        .target(name: "PlaybackCore"),
        .executableTarget(name: "playback-syncd", dependencies: ["PlaybackCore"]),
        .testTarget(
            name: "PlaybackCoreTests",
            dependencies: ["PlaybackCore"],
            resources: []
        ),
    ],
    swiftLanguageModes: [.v6]
)
