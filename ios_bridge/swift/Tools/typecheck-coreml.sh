#!/bin/sh
# The Core ML runner on machines without Core ML (Linux CI), in a scratch package under .build/:
# - builds Sources/MobileO (CoreMLRunner.swift included) against Tools/CoreMLStandIn, a
#   functional Core ML stand-in (real multiarrays with padded strides, states, function names,
#   async predictions served from a recording of the exported bundles run by mil_exec), and a
#   CoreGraphics stub (written below), and the repository's examples/*.swift against that MobileO;
# - with MOBILEO_GOLDEN_DIR set (make swift-test) and a recording in it (coreml/), runs
#   Tools/CoreMLStandIn/Tests: the real runners drive generation and must equal Python.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
examples=$(cd "$here/../../examples" && pwd)
if [ "$(uname)" = Darwin ]; then echo "typecheck-coreml: macOS compiles the real runner; nothing to do"; exit 0; fi
work="$here/.build/coreml-typecheck"
rm -rf "$work/Sources" "$work/Tests"
mkdir -p "$work/Sources/CoreML" "$work/Sources/CoreGraphics" "$work/Sources/MobileO" "$work/Sources/Examples" \
  "$work/Tests/CoreMLRunnerTests"
cp "$here/Tools/CoreMLStandIn/CoreML.swift" "$work/Sources/CoreML/"
cp "$here"/Sources/MobileO/*.swift "$work/Sources/MobileO/"
# The examples are declarations only (no top-level code), so one library target holds them all
# (Understand/Edit call GenerateExample.makePipeline).
cp "$examples"/*.swift "$work/Sources/Examples/"
cp "$here"/Tools/CoreMLStandIn/Tests/*.swift "$here/Tests/MobileOTests/FakeRunners.swift" \
  "$here/Tests/MobileOTests/Golden.swift" "$work/Tests/CoreMLRunnerTests/"
# CoreGraphics stub: the API surface Image.swift (`#if canImport(CoreGraphics)`) and the examples
# use, with the iOS 18 / macOS 15 SDK signatures.  Nothing here runs.  CGFloat and CGRect come
# from Foundation, as CoreGraphics re-exports them on Apple platforms.
cat > "$work/Sources/CoreGraphics/CoreGraphics.swift" <<'SWIFT'
@_exported import Foundation
public typealias CFData = NSData
public typealias CFString = NSString
open class CGColorSpace { init() {}; public init?(name: CFString) {}; public static let sRGB: CFString = NSString(string: "kCGColorSpaceSRGB") }
public func CGColorSpaceCreateDeviceRGB() -> CGColorSpace { CGColorSpace() }
public enum CGImageAlphaInfo: UInt32 {
  case none, premultipliedLast, premultipliedFirst, last, first, noneSkipLast, noneSkipFirst, alphaOnly
}
public struct CGBitmapInfo: OptionSet { public let rawValue: UInt32; public init(rawValue: UInt32) { self.rawValue = rawValue } }
public enum CGColorRenderingIntent: Int32 { case defaultIntent, absoluteColorimetric, relativeColorimetric, perceptual, saturation }
public enum CGInterpolationQuality: Int32 { case `default`, none, low, medium, high }
open class CGDataProvider { public init?(data: CFData) {} }
open class CGImage {
  public init?(width: Int, height: Int, bitsPerComponent: Int, bitsPerPixel: Int, bytesPerRow: Int,
               space: CGColorSpace, bitmapInfo: CGBitmapInfo, provider: CGDataProvider,
               decode: UnsafePointer<CGFloat>?, shouldInterpolate: Bool, intent: CGColorRenderingIntent) { nil }
  open var width: Int { 0 }
  open var height: Int { 0 }
}
open class CGContext {
  public init?(data: UnsafeMutableRawPointer?, width: Int, height: Int, bitsPerComponent: Int, bytesPerRow: Int,
               space: CGColorSpace, bitmapInfo: UInt32) { nil }
  open var interpolationQuality: CGInterpolationQuality = .default
  open func setFillColor(red: CGFloat, green: CGFloat, blue: CGFloat, alpha: CGFloat) {}
  open func fill(_ rect: CGRect) {}
  open func draw(_ image: CGImage, in rect: CGRect, byTiling: Bool = false) {}
}
SWIFT
cat > "$work/Package.swift" <<'PKG'
// swift-tools-version:6.0
import PackageDescription
let package = Package(name: "CoreMLTypecheck", targets: [
    // the stand-ins take the place of Apple's (Objective-C) frameworks: Swift 5 mode; MobileO,
    // the examples and the tests in Swift 6 mode, as in the package
    .target(name: "CoreML", swiftSettings: [.swiftLanguageMode(.v5)]),
    .target(name: "CoreGraphics", swiftSettings: [.swiftLanguageMode(.v5)]),
    .target(name: "MobileO", dependencies: ["CoreML", "CoreGraphics"]),
    .target(name: "Examples", dependencies: ["MobileO", "CoreML", "CoreGraphics"]),
    .testTarget(name: "CoreMLRunnerTests", dependencies: ["MobileO", "CoreML"])])
PKG
cd "$work"
swift build -q -Xswiftc -warnings-as-errors
echo "typecheck-coreml: CoreMLRunner.swift and examples/*.swift build against the Core ML stand-in and a CoreGraphics stub"
if [ -n "${MOBILEO_GOLDEN_DIR:-}" ] && [ -f "$MOBILEO_GOLDEN_DIR/coreml/calls.json" ]; then
  export MOBILEO_COREML_RECORDING="$MOBILEO_GOLDEN_DIR/coreml"
  export XDG_CACHE_HOME="$work/cache"  # the runner's compile cache (Caches/MobileO) lives here
  if swift test --disable-swift-testing -Xswiftc -warnings-as-errors > "$work/test.log" 2>&1; then
    grep -E "coreml stand-in:" "$work/test.log"; grep -m1 -E "Executed [0-9]+ tests" "$work/test.log"
  else
    grep -E "error|failed|coreml stand-in" "$work/test.log" | tail -30
    echo "typecheck-coreml: CoreMLRunnerTests failed (log: $work/test.log)"; exit 1
  fi
else
  echo "typecheck-coreml: MOBILEO_GOLDEN_DIR has no Core ML recording (coreml/): CoreMLRunnerTests not run"
fi
