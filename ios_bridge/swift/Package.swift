// swift-tools-version:6.0
// Mobile-O on Apple platforms: manifest, samplers, tokenizer, pipeline, Core ML runner.
// No external dependencies; builds and tests on Linux (the Core ML runner is compiled
// only where CoreML exists).  The library builds in the Swift 5 language mode; its public
// API is Sendable-correct for Swift 6 apps, which MobileOAppTests (Swift 6 mode) checks.
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
        // the package used the way an app does (@MainActor view model, streams, detached
        // work, cancellation), compiled in the Swift 6 language mode: it must build
        .testTarget(name: "MobileOAppTests", dependencies: ["MobileO"],
                    swiftSettings: [.swiftLanguageMode(.v6)]),
    ],
    swiftLanguageModes: [.v5]
)
