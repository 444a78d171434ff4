// swift-tools-version:5.9
// Mobile-O on Apple platforms: manifest, samplers, tokenizer, pipeline, Core ML runner.
// No external dependencies; builds and tests on Linux (the Core ML runner is compiled
// only where CoreML exists).
import PackageDescription

let package = Package(
    name: "MobileO",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "MobileO", targets: ["MobileO"]),
    ],
    targets: [
        .target(name: "MobileO"),
        .testTarget(name: "MobileOTests", dependencies: ["MobileO"]),
    ]
)
