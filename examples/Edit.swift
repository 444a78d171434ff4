// Image + instruction -> edited image.
import CoreGraphics
import Foundation
import MobileO

@available(iOS 18.0, macOS 15.0, *)
enum EditExample {
    static func run(export: URL, photo: CGImage) async throws -> CGImage? {
        let engine = try GenerateExample.makeEngine(export: export)
        let pixels = try engine.pixels(from: photo)
        // Cancelling the surrounding Task stops the sampler after the current step
        // (the engine checks Task.isCancelled and throws MobileOError.cancelled).
        let edited = try await engine.edit(pixels: pixels, instruction: "make the cup blue", options: .init(seed: 7))
        return edited.image.cgImage()
    }
}
