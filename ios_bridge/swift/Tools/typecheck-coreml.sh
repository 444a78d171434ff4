#!/bin/sh
# Type-check the Core ML runner and the app snippets on machines without Core ML (Linux CI):
# build Sources/MobileO against Tools/CoreMLStub and a CoreGraphics stub (written below), and
# the repository's examples/*.swift against that MobileO, in a scratch package under .build/.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
examples=$(cd "$here/../../examples" && pwd)
if [ "$(uname)" = Darwin ]; then echo "typecheck-coreml: macOS compiles the real runner; nothing to do"; exit 0; fi
work="$here/.build/coreml-typecheck"
rm -rf "$work/Sources"
mkdir -p "$work/Sources/CoreML" "$work/Sources/CoreGraphics" "$work/Sources/MobileO" "$work/Sources/Examples" \
  "$work/Sources/ObjectiveC"
cp "$here/Tools/CoreMLStub/CoreML.swift" "$work/Sources/CoreML/"
# ObjectiveC stub: makes the `#if canImport(ObjectiveC)` paths (autoreleasepool around each
# prediction) type-check too; on Apple platforms CoreML re-exports it through Foundation.
cat > "$work/Sources/ObjectiveC/ObjectiveC.swift" <<'SWIFT'
public func autoreleasepool<Result>(invoking body: () throws -> Result) rethrows -> Result { try body() }
SWIFT
cp "$here"/Sources/MobileO/*.swift "$work/Sources/MobileO/"
# The examples are declarations only (no top-level code), so one library target holds them all
# (Understand/Edit call GenerateExample.makePipeline).
cp "$examples"/*.swift "$work/Sources/Examples/"
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
// swift-tools-version:5.9
import PackageDescription
let package = Package(name: "CoreMLTypecheck", targets: [
    .target(name: "ObjectiveC"), .target(name: "CoreML", dependencies: ["ObjectiveC"]), .target(name: "CoreGraphics"),
    .target(name: "MobileO", dependencies: ["CoreML", "CoreGraphics"]),
    .target(name: "Examples", dependencies: ["MobileO", "CoreML", "CoreGraphics"])])
PKG
cd "$work" && swift build -q && echo "typecheck-coreml: CoreMLRunner.swift and examples/*.swift type-check against the Core ML / CoreGraphics stubs"
