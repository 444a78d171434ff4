// Image + question -> answer, streamed token by token.
import CoreGraphics
import Foundation
import MobileO

@available(iOS 18.0, macOS 15.0, *)
enum UnderstandExample {
    static func run(export: URL, photo: CGImage) async throws -> String {
        let pipeline = try await GenerateExample.makePipeline(export: export)
        // expand to square (black), resize to the encoder's size, [0, 1] — facts from the manifest
        let pixels = try ImagePreprocess.pixels(from: photo, pipeline.manifest.pipeline.imagePreprocess)
        let answer = try pipeline.understand(pixels: pixels, question: "What is in the picture?",
                                             options: .init(maxNewTokens: 128, temperature: 0)) { event in
            if case .token(_, let text) = event { print(text, terminator: "") }
            return true
        }
        return answer.text
    }
}
