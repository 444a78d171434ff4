// Image + instruction -> edited image.
import CoreGraphics
import Foundation
import MobileO

@available(iOS 18.0, macOS 15.0, *)
enum EditExample {
    static func run(export: URL, photo: CGImage) async throws -> CGImage? {
        let pipeline = try await GenerateExample.makePipeline(export: export)
        let pixels = try ImagePreprocess.pixels(from: photo, pipeline.manifest.pipeline.imagePreprocess)
        // Cancelling the surrounding Task stops the sampler after the current step
        // (the pipeline checks Task.isCancelled and throws MobileOError.cancelled).
        let edited = try pipeline.edit(pixels: pixels, instruction: "make the cup blue", options: .init(seed: 7))
        return edited.image.cgImage()
    }
}
