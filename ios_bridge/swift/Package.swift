// swift-tools-version:6.0
// Mobile-O on Apple platforms: manifest, samplers, tokenizer, pipeline, Core ML runner.
// No external dependencies; builds and tests on Linux (the Core ML runner is compiled only
// where CoreML exists, and type-checked against a stub elsewhere: Tools/typecheck-coreml.sh).
// Every target is in the Swift 6 language mode; `make swift-test` builds with warnings as
// errors (-Xswiftc -warnings-as-errors, kept out of this file so that apps can depend on it).
import PackageDescription

let package = Package(
    name: "MobileO",
    // one floor everywhere: the Core ML runner needs iOS 18 / macOS 15 (stateful, multifunction models)
    platforms: [.iOS(.v18), .macOS(.v15)],
    products: [
        .library(name: "MobileO", targets: ["MobileO"]),
    ],
    targets: [
        .target(name: "MobileO"),
        .testTarget(name: "MobileOTests", dependencies: ["MobileO"]),
        // the package used the way an app does (@MainActor view model, streams, closures that
        // hop to the main actor, cancellation, memory warnings, mocks): only the public API
        .testTarget(name: "MobileOAppTests", dependencies: ["MobileO"]),
        // `swift run -c release MobileOBench`: token sampling ms/token at top-k 50 over Qwen's
        // 151,936 logits, and the engine's responsiveness with 100 ms fake steps (not in `make test`)
        .executableTarget(name: "MobileOBench", dependencies: ["MobileO"]),
    ],
    swiftLanguageModes: [.v6]
)
