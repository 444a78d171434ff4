import Foundation
#if canImport(CoreGraphics)
import CoreGraphics
#endif

/// An 8-bit RGB image, row-major, interleaved (R, G, B per pixel).
public struct RGBImage: Equatable, Sendable {
    /// Width in pixels.
    public var width: Int
    /// Height in pixels.
    public var height: Int
    /// width x height x 3 bytes, row-major, R G B per pixel.
    public var pixels: [UInt8]

    /// An image from its bytes; throws `MobileOError` unless there are width x height x 3 of them.
    public init(width: Int, height: Int, pixels: [UInt8]) throws {
        guard width >= 0, height >= 0, pixels.count == width * height * 3 else {
            throw MobileOError(.pipeline, "an RGB image of \(width)x\(height) needs \(width * height * 3) bytes, got \(pixels.count).",
                               fix: "pass width x height x 3 bytes (R, G, B per pixel).")
        }
        self.width = width; self.height = height; self.pixels = pixels
    }

    /// The package's own constructor, where the sizes are right by construction.
    init(uncheckedWidth width: Int, height: Int, pixels: [UInt8]) {
        assert(pixels.count == width * height * 3, "RGBImage needs width * height * 3 bytes")
        self.width = width; self.height = height; self.pixels = pixels
    }
}

/// Latent -> image post-processing, as Mobile-O's Python: latents / scaling_factor go to the
/// VAE decoder; its output x becomes clamp(x / 2 + 0.5, 0, 1), then round(255 * .) as uint8.
public enum ImagePostprocess {
    /// What the VAE decoder takes: latents / scaling factor.
    public static func decoderInput(_ latents: Tensor, scalingFactor: Double) -> Tensor {
        let s = Float(scalingFactor)
        return latents.map { $0 / s }
    }

    /// Decoder output [3, H, W] (about [-1, 1]) -> [3, H, W] in [0, 1].
    public static func unitRange(_ decoded: Tensor) -> Tensor {
        decoded.map { Swift.min(Swift.max($0 / 2 + 0.5, 0), 1) }
    }

    /// [3, H, W] in [0, 1] -> 8-bit RGB (round half to even, like torch/numpy/MLX).
    public static func rgb8(_ unit: Tensor) throws -> RGBImage {
        guard unit.shape.count == 3, unit.shape[0] == 3 else {
            throw MobileOError(.pipeline, "the decoded image has shape \(unit.shape); expected [3, H, W].")
        }
        let h = unit.shape[1], w = unit.shape[2], plane = h * w
        var px = [UInt8](repeating: 0, count: plane * 3)
        for c in 0..<3 {
            for i in 0..<plane {
                let v = (unit.data[c * plane + i] * 255).rounded(.toNearestOrEven)
                px[i * 3 + c] = UInt8(Swift.min(Swift.max(v, 0), 255))
            }
        }
        return RGBImage(uncheckedWidth: w, height: h, pixels: px)
    }
}

/// Image -> vision-encoder input [3, S, S] in [0, 1] (manifest `image_preprocess`):
/// expand to a square with the pad colour, resize to S, rescale.  The portable path takes
/// images already S x S; on Apple platforms `pixels(from: CGImage)` also resizes (Core
/// Graphics, high quality — close to, not bit-equal with, PIL's bicubic).
public enum ImagePreprocess {
    /// Pad an RGB image to a centred square with `color` (LLaVA's expand2square).
    public static func expandToSquare(_ image: RGBImage, color: [Int]) -> RGBImage {
        let side = Swift.max(image.width, image.height)
        if image.width == image.height { return image }
        var px = [UInt8](repeating: 0, count: side * side * 3)
        for i in 0..<(side * side) { for c in 0..<3 { px[i * 3 + c] = UInt8(clamping: color[c]) } }
        let ox = (side - image.width) / 2, oy = (side - image.height) / 2
        for y in 0..<image.height {
            for x in 0..<image.width {
                for c in 0..<3 { px[((y + oy) * side + x + ox) * 3 + c] = image.pixels[(y * image.width + x) * 3 + c] }
            }
        }
        return RGBImage(uncheckedWidth: side, height: side, pixels: px)
    }

    /// A square image already at the encoder's size -> [3, S, S] tensor, rescaled and normalized.
    public static func tensor(_ image: RGBImage, _ p: Manifest.ImagePreprocess) throws -> Tensor {
        guard image.width == p.size, image.height == p.size else {
            throw MobileOError(.pipeline, "the image is \(image.width)x\(image.height); the vision encoder takes \(p.size)x\(p.size).",
                               fix: "resize it first (ImagePreprocess.pixels(from:) does on Apple platforms).")
        }
        let plane = p.size * p.size
        var data = [Float](repeating: 0, count: plane * 3)
        for c in 0..<3 {
            let mean = Float(p.imageMean[c]), std = Float(p.imageStd[c]), scale = Float(p.rescaleFactor)
            for i in 0..<plane { data[c * plane + i] = (Float(image.pixels[i * 3 + c]) * scale - mean) / std }
        }
        return Tensor(uncheckedShape: [3, p.size, p.size], data: data)
    }

    #if canImport(CoreGraphics)
    /// Any CGImage -> [3, S, S]: expand to square with the pad colour, high-quality resize, rescale.
    public static func pixels(from image: CGImage, _ p: Manifest.ImagePreprocess) throws -> Tensor {
        let s = p.size, side = Swift.max(image.width, image.height)
        var px = [UInt8](repeating: 0, count: s * s * 4)
        let drawn = px.withUnsafeMutableBytes { buffer -> Bool in  // the context draws into px
            guard let ctx = CGContext(data: buffer.baseAddress, width: s, height: s, bitsPerComponent: 8, bytesPerRow: s * 4,
                                      space: (CGColorSpace(name: CGColorSpace.sRGB) ?? CGColorSpaceCreateDeviceRGB()),
                                      bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return false }
            ctx.setFillColor(red: CGFloat(p.padColor[0]) / 255, green: CGFloat(p.padColor[1]) / 255,
                             blue: CGFloat(p.padColor[2]) / 255, alpha: 1)
            ctx.fill(CGRect(x: 0, y: 0, width: s, height: s))
            ctx.interpolationQuality = .high
            let k = CGFloat(s) / CGFloat(side)
            let w = CGFloat(image.width) * k, h = CGFloat(image.height) * k
            ctx.draw(image, in: CGRect(x: (CGFloat(s) - w) / 2, y: (CGFloat(s) - h) / 2, width: w, height: h))
            return true
        }
        guard drawn else { throw MobileOError(.pipeline, "cannot create a \(s)x\(s) drawing context.") }
        var rgb = [UInt8](repeating: 0, count: s * s * 3)
        for i in 0..<(s * s) { for c in 0..<3 { rgb[i * 3 + c] = px[i * 4 + c] } }
        return try tensor(RGBImage(uncheckedWidth: s, height: s, pixels: rgb), p)
    }
    #endif
}

#if canImport(CoreGraphics)
extension RGBImage {
    /// A CGImage of these pixels (for UIImage / NSImage / SwiftUI Image).
    public func cgImage() -> CGImage? {
        let data = Data(pixels) as CFData
        guard let provider = CGDataProvider(data: data) else { return nil }
        return CGImage(width: width, height: height, bitsPerComponent: 8, bitsPerPixel: 24, bytesPerRow: width * 3,
                       space: (CGColorSpace(name: CGColorSpace.sRGB) ?? CGColorSpaceCreateDeviceRGB()), bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.none.rawValue),
                       provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)
    }
}
#endif

/// How a photo's stored pixels map to the upright picture (EXIF / `CGImagePropertyOrientation`
/// order and meaning; `UIImage.Orientation` maps case by case).  Camera photos are usually
/// stored sideways: pass their orientation so the model sees them upright.
public enum ImageOrientation: Int, Sendable, CaseIterable {
    case up = 1, upMirrored, down, downMirrored, leftMirrored, right, rightMirrored, left
}

extension ImagePreprocess {
    /// The upright version of square encoder pixels [C, S, S] stored with orientation `o`.
    /// (Expanding to a centred square and resizing commute with these turns, so orienting
    /// the encoder's input equals orienting the photo first.)
    public static func orient(_ pixels: Tensor, _ o: ImageOrientation) -> Tensor {
        guard o != .up, pixels.shape.count == 3, pixels.shape[1] == pixels.shape[2] else { return pixels }
        let c = pixels.shape[0], s = pixels.shape[1], last = s - 1
        var out = [Float](repeating: 0, count: pixels.count)
        for ch in 0..<c {
            let base = ch * s * s
            for y in 0..<s {
                for x in 0..<s {
                    let (sy, sx): (Int, Int)
                    switch o {
                    case .up: (sy, sx) = (y, x)
                    case .upMirrored: (sy, sx) = (y, last - x)
                    case .down: (sy, sx) = (last - y, last - x)
                    case .downMirrored: (sy, sx) = (last - y, x)
                    case .leftMirrored: (sy, sx) = (x, y)                 // transpose
                    case .right: (sy, sx) = (last - x, y)                 // turn 90° clockwise
                    case .rightMirrored: (sy, sx) = (last - x, last - y)  // transverse
                    case .left: (sy, sx) = (x, last - y)                  // turn 90° counter-clockwise
                    }
                    out[base + y * s + x] = pixels.data[base + sy * s + sx]
                }
            }
        }
        return Tensor(uncheckedShape: pixels.shape, data: out)
    }

    #if canImport(CoreGraphics)
    /// A photo as the encoder's input, upright (`orientation`), drawn in sRGB.
    public static func pixels(from image: CGImage, orientation: ImageOrientation,
                              _ p: Manifest.ImagePreprocess) throws -> Tensor {
        orient(try pixels(from: image, p), orientation)
    }
    #endif
}

#if canImport(CoreGraphics)
extension MobileOEngine {
    /// A photo (any size, `orientation` as stored) -> the encoder's pixels for `edit` /
    /// `understand`.  Nonisolated and synchronous: call it where the CGImage lives.
    public nonisolated func pixels(from image: CGImage, orientation: ImageOrientation = .up) throws -> Tensor {
        try ImagePreprocess.pixels(from: image, orientation: orientation, manifest.pipeline.imagePreprocess)
    }
}
#endif

#if canImport(UIKit)
import UIKit

extension ImageOrientation {
    /// The orientation of a UIKit image.
    public init(_ o: UIImage.Orientation) {
        switch o {
        case .up: self = .up
        case .upMirrored: self = .upMirrored
        case .down: self = .down
        case .downMirrored: self = .downMirrored
        case .left: self = .left
        case .leftMirrored: self = .leftMirrored
        case .right: self = .right
        case .rightMirrored: self = .rightMirrored
        @unknown default: self = .up
        }
    }
}

extension MobileOEngine {
    /// A UIImage (its orientation honoured) -> the encoder's pixels.
    public nonisolated func pixels(from image: UIImage) throws -> Tensor {
        guard let cg = image.cgImage else {
            throw MobileOError(.pipeline, "the UIImage has no bitmap (CGImage).", fix: "render it into a bitmap first.")
        }
        return try pixels(from: cg, orientation: ImageOrientation(image.imageOrientation))
    }
}

extension RGBImage {
    /// The image as a `UIImage` (nil where Core Graphics cannot make it).
    public func uiImage() -> UIImage? { cgImage().map { UIImage(cgImage: $0) } }
}
#elseif canImport(AppKit)
import AppKit

extension MobileOEngine {
    /// An NSImage -> the encoder's pixels.
    public nonisolated func pixels(from image: NSImage) throws -> Tensor {
        guard let cg = image.cgImage(forProposedRect: nil, context: nil, hints: nil) else {
            throw MobileOError(.pipeline, "the NSImage has no bitmap (CGImage).", fix: "render it into a bitmap first.")
        }
        return try pixels(from: cg)
    }
}

extension RGBImage {
    /// The image as an `NSImage` (nil where Core Graphics cannot make it).
    public func nsImage() -> NSImage? { cgImage().map { NSImage(cgImage: $0, size: NSSize(width: width, height: height)) } }
}
#endif
