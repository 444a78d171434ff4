// Text -> image with the exported bundles.  (Type-checked on Linux by
// ios_bridge/swift/Tools/typecheck-coreml.sh; runs on iOS 18 / macOS 15.)
import CoreGraphics
import CoreML
import Foundation
import MobileO
import Observation

@available(iOS 18.0, macOS 15.0, *)
enum GenerateExample {
    /// `export`: the folder `python -m coreml_convert --out ...` wrote, added to the app as a
    /// folder reference.  Loads nothing yet: each task loads the models it needs.
    static func makeEngine(export: URL, reduceMemory: Bool = true) throws -> MobileOEngine {
        let manifest = try Manifest.load(from: export)  // decodes and validates
        // optional, once after download: sizes and sha256 of every bundle
        let problems = manifest.fileProblems(in: export, hashes: false)
        guard problems.isEmpty else { throw MobileOError(.manifest, problems.joined(separator: " ")) }
        let tokenizer = try BPETokenizer(tokenizerJSON: export.appendingPathComponent(manifest.pipeline.tokenizer.tokenizerJSON!))
        // .reduceMemory: each model is freed after its stage (at most one of LLM / DiT / VAE in
        // memory); the policy can change later with `engine.setMemoryPolicy(_:)`
        return try MobileOEngine(manifest: manifest, tokenizer: tokenizer,
                                 loaders: CoreMLRunners.loaders(manifest: manifest, folder: export),
                                 memoryPolicy: reduceMemory ? .reduceMemory : .keepLoaded)
    }

    static func run(export: URL) async throws -> CGImage? {
        let engine = try makeEngine(export: export)
        try await engine.prewarm([.generation])  // optional: compile / specialise ahead of the first use
        // steps / guidance default to the manifest's (20, 1.5); `seed` picks the initial noise.
        // Cancelling the surrounding Task stops during the current step (MobileOError.cancelled).
        let result = try await engine.generate(prompt: "a red cup on a wooden table",
                                               options: .init(steps: 20, guidance: 1.5, seed: 42)) { event in
            if case .step(let i, let n, _) = event { print("step \(i + 1)/\(n)") }
        }
        return result.image.cgImage()
    }
}

/// An app's view model: starts a generation, shows its progress, cancels it (observable, so a
/// SwiftUI view redraws as it changes: SwiftUIApp.swift).
@available(iOS 18.0, macOS 15.0, *)
@MainActor
@Observable
final class GenerationModel {
    private(set) var fraction = 0.0
    private(set) var image: CGImage?
    private(set) var error: String?
    private(set) var running = false
    private let engine: MobileOEngine
    private var task: Task<Void, Never>?

    init(engine: MobileOEngine) { self.engine = engine }

    func start(_ prompt: String) {
        task?.cancel()
        image = nil
        error = nil
        fraction = 0
        running = true
        task = Task {
            defer { running = false }
            do {
                for try await event in engine.generationEvents(prompt: prompt, options: .init(seed: 42)) {
                    switch event {
                    case .progress(.step(let i, let n, _)): fraction = Double(i + 1) / Double(n)
                    case .progress: break
                    case .finished(let out): image = out.image.cgImage()
                    }
                }
                // when its Task is cancelled the stream ends without `.finished`
                if Task.isCancelled { fraction = 0 }
            } catch let e as MobileOError where e.kind == .cancelled {
                fraction = 0
            } catch {
                self.error = "\(error)"
            }
        }
    }

    func cancel() { task?.cancel() }

    /// On a memory warning: free every model no running stage uses at once, the running
    /// stage's when it ends (the next task reloads what it needs).
    func didReceiveMemoryWarning() { Task { await engine.unloadResources() } }
}
