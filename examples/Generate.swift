// Text -> image with the exported bundles.  (Type-checked on Linux by
// ios_bridge/swift/Tools/typecheck-coreml.sh; runs on iOS 18 / macOS 15.)
import CoreGraphics
import CoreML
import Foundation
import MobileO

@available(iOS 18.0, macOS 15.0, *)
enum GenerateExample {
    /// `export`: the folder `python -m coreml_convert --out ...` wrote, added to the app as a folder reference.
    static func makePipeline(export: URL) async throws -> MobileOPipeline {
        let manifest = try Manifest.load(from: export)  // decodes and validates
        // optional, once after download: sizes and sha256 of every bundle
        let problems = manifest.fileProblems(in: export, hashes: false)
        guard problems.isEmpty else { throw MobileOError(.manifest, problems.joined(separator: " ")) }
        let tokenizer = try BPETokenizer(tokenizerJSON: export.appendingPathComponent(manifest.pipeline.tokenizer.tokenizerJSON!))
        let runners = try await CoreMLRunners.load(manifest: manifest, folder: export)
        return try MobileOPipeline(manifest: manifest, tokenizer: tokenizer, runners: runners)
    }

    static func run(export: URL) async throws -> CGImage? {
        let pipeline = try await makePipeline(export: export)
        // steps / guidance default to the manifest's (20, 1.5); `seed` picks the initial noise
        let result = try pipeline.generate(prompt: "a red cup on a wooden table",
                                           options: .init(steps: 20, guidance: 1.5, seed: 42)) { event in
            if case .step(let i, let n, _) = event { print("step \(i + 1)/\(n)") }
            return !Task.isCancelled  // return false to stop early
        }
        return result.image.cgImage()
    }
}
