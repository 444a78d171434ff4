// The package used as an app uses it, compiled in the Swift 6 language mode (strict
// concurrency, warnings as errors in `make swift-test`): a @MainActor view model that starts
// work in Tasks, iterates the engine's streams, takes progress through a closure that hops to
// the main actor, runs a detached task, cancels, handles a memory warning, runs two tasks at
// once, and builds previews and mocks from public initialisers.  Only the public API (no @testable).
import Foundation
import MobileO
import XCTest

/// What an app's view model looks like.
@MainActor
final class MobileOViewModel {
    private(set) var fraction = 0.0
    private(set) var image: RGBImage?
    private(set) var answer = ""
    private(set) var failure: String?
    private(set) var cancelled = false
    private(set) var preview: RGBImage?
    private(set) var stepsSeen = 0
    let engine: MobileOEngine
    private var work: Task<Void, Never>?

    init(engine: MobileOEngine) { self.engine = engine }

    /// Start a generation (cancelling the previous one); the UI observes the properties.
    func generate(_ prompt: String, steps: Int) {
        work?.cancel()
        fraction = 0
        image = nil
        cancelled = false
        work = Task {
            do {
                for try await event in engine.generationEvents(prompt: prompt, options: .init(steps: steps)) {
                    try Task.checkCancellation()  // ignore what was already buffered
                    switch event {
                    case .progress(.step(let i, let n, _)): fraction = Double(i + 1) / Double(n)
                    case .progress(.preview(_, let image)): preview = image
                    case .progress: break
                    case .finished(let out): image = out.image
                    }
                }
                // a stream whose consumer is cancelled just ends (AsyncThrowingStream semantics)
                if Task.isCancelled { cancelled = true }
            } catch is CancellationError {
                cancelled = true
            } catch let e as MobileOError where e.kind == .cancelled {
                cancelled = true
            } catch {
                failure = "\(error)"
            }
        }
    }

    func ask(_ question: String, pixels: Tensor) {
        work?.cancel()
        answer = ""
        work = Task {
            do {
                for try await event in engine.understandingEvents(pixels: pixels, question: question,
                                                                  options: .init(temperature: 0)) {
                    if case .progress(.token(_, let text)) = event { answer += text }
                }
            } catch {
                failure = "\(error)"
            }
        }
    }

    /// Text-only chat keeping its history.
    private(set) var history: [ChatTurn] = []
    func send(_ message: String) async {
        do {
            let reply = try await engine.chat(message, history: history, options: .init(maxNewTokens: 8, temperature: 0))
            history.append(ChatTurn(user: message, assistant: reply.text))
        } catch {
            failure = "\(error)"
        }
    }

    /// The closure pattern: the callback is `@Sendable` and runs on the engine; it hops to the
    /// main actor to touch the view model (a `@MainActor` class is `Sendable`).
    func generateWithCallback(_ prompt: String) async throws -> GeneratedImage {
        try await engine.generate(prompt: prompt, options: ImageOptions(steps: 3, seed: 5)) { [weak self] event in
            guard case .step = event else { return }
            Task { @MainActor in self?.stepsSeen += 1 }
        }
    }

    /// What an app does on UIApplication.didReceiveMemoryWarningNotification.
    func memoryWarning() { Task { await engine.unloadResources() } }

    /// Prompt length for a counter under the text field (the tokenizer is Sendable).
    nonisolated func tokens(_ text: String) -> Int { (try? engine.tokenCount(text)) ?? 0 }

    func cancel() { work?.cancel() }
    func finish() async { await work?.value }

    /// Work off the main actor: the engine and the results are Sendable.
    func generateDetached(_ prompt: String) async throws -> RGBImage {
        let engine = self.engine
        let out = try await Task.detached(priority: .userInitiated) {
            try await engine.generate(prompt: prompt, options: .init(steps: 2, seed: 1))
        }.value
        return out.image
    }
}

// Minimal runners with the right shapes (an app would use CoreMLRunners.loaders).  A runner
// is Sendable: one with state keeps it behind a lock.
final class ZeroLLM: LanguageModelRunner {
    let dim: Int, vocab: Int, eos: Int
    private let state = NSLock()
    nonisolated(unsafe) private var _produced = 0
    private var produced: Int {
        get { state.withLock { _produced } }
        set { state.withLock { _produced = newValue } }
    }
    init(dim: Int, vocab: Int, eos: Int) { self.dim = dim; self.vocab = vocab; self.eos = eos }
    func hiddenStates(_ prompt: [PromptSegment], count: Int) throws -> [Tensor] {
        let l = prompt.reduce(0) { $0 + $1.length }
        return (0..<count).map { _ in Tensor(zeros: [l, dim]) }
    }
    func logits() -> [Float] {
        let target = produced < 3 ? 65 + produced : eos
        return (0..<vocab).map { $0 == target ? 1 : 0 }
    }
    func prefill(_ prompt: [PromptSegment]) throws -> [Float] { produced = 0; return logits() }
    func decode(_ token: Int) throws -> [Float] { produced += 1; return logits() }
}

final class ZeroVision: VisionRunner {
    let shape: [Int]
    init(tokens: Int, dim: Int) { shape = [tokens, dim] }
    func imageEmbeddings(_ pixels: Tensor) throws -> Tensor { Tensor(zeros: shape) }
}

final class ZeroMCP: ConditioningRunner {
    let channels: Int
    init(channels: Int) { self.channels = channels }
    func conditioning(_ hiddenStates: [Tensor]) throws -> Tensor { Tensor(zeros: [hiddenStates[0].shape[0], channels]) }
}

final class DampingDiT: DenoiserRunner {
    func velocity(latents: Tensor, timestep: Double, conditioning: Tensor) async throws -> Tensor {
        try await Task.sleep(nanoseconds: 1_000_000)  // a model call that honours cancellation
        return latents.map { -0.5 * $0 }
    }
}

/// Previews and mocks from the public initialisers (what a SwiftUI preview would build).
enum Mocks {
    static func image() throws -> GeneratedImage {
        let rgb = try RGBImage(width: 2, height: 2, pixels: [UInt8](repeating: 128, count: 12))
        return GeneratedImage(image: rgb, unit: try Tensor(shape: [3, 2, 2], data: [Float](repeating: 0.5, count: 12)),
                              latents: Tensor(zeros: [4, 1, 1]), promptIds: [1, 2, 3], seed: 42, steps: 20, guidance: 1.2)
    }
    static let answer = Answer(text: "A red cup.", ids: [32, 2518, 10525], finishReason: .stop)
    static let imageOptions = ImageOptions(steps: 20, guidance: 1.2, seed: 42, sampler: .euler, previewEvery: 5)
    static let textOptions = TextOptions(maxNewTokens: 64, temperature: 0.7, topP: 0.9, topK: 50, minP: 0.05, seed: 1)
    static let progress: [MobileOProgress] = [.loading(.llm), .loaded(.llm), .encoded(promptTokens: 12), .decoded,
                                       .token(id: 32, text: "A")]
}

final class AppUsageTests: XCTestCase {
    static func export() throws -> URL {
        guard let path = ProcessInfo.processInfo.environment["MOBILEO_GOLDEN_DIR"], !path.isEmpty else {
            throw XCTSkip("MOBILEO_GOLDEN_DIR is not set (it holds the exported manifest), so this test is skipped: run `make swift-test`.")
        }
        return URL(fileURLWithPath: path).appendingPathComponent("export")
    }

    @MainActor static func makeEngine() throws -> MobileOEngine {
        let export = try Self.export()
        let manifest = try Manifest.load(from: export)
        let tokenizer = try BPETokenizer(tokenizerJSON: export.appendingPathComponent(manifest.pipeline.tokenizer.tokenizerJSON!))
        let p = manifest.pipeline, c = p.conditioning
        let eos = p.tokenizer.id(ofRole: "eos")!, vocab = p.tokenizer.vocabSize
        let loaders = RunnerLoaders(
            llm: { ZeroLLM(dim: c.llmHiddenSize, vocab: vocab, eos: eos) },
            vision: { ZeroVision(tokens: c.imageTokens, dim: c.llmHiddenSize) },
            mcp: { ZeroMCP(channels: c.captionChannels) },
            dit: { DampingDiT() },
            vae: { ScaledDecoder(scalingFactor: 1) { z in Tensor(zeros: [3, z.shape[1] * 2, z.shape[2] * 2]) } })
        return try MobileOEngine(manifest: manifest, tokenizer: tokenizer, loaders: loaders, memoryPolicy: .reduceMemory)
    }

    @MainActor
    func testViewModelGeneratesAsksAndCancels() async throws {
        let engine = try Self.makeEngine()
        let model = MobileOViewModel(engine: engine)
        XCTAssertGreaterThan(model.tokens("a red cup"), 0)
        model.generate("a red cup", steps: 3)
        await model.finish()
        XCTAssertNil(model.failure)
        XCTAssertEqual(model.fraction, 1)
        XCTAssertNotNil(model.image)

        let size = engine.manifest.pipeline.imagePreprocess.size
        model.ask("What is this?", pixels: Tensor(zeros: [3, size, size]))
        await model.finish()
        XCTAssertNil(model.failure)
        XCTAssertEqual(model.answer.count, 3)

        model.generate("a blue cup", steps: 500)
        model.cancel()
        await model.finish()
        XCTAssertTrue(model.cancelled, "cancelled")
        XCTAssertNil(model.image, "no image from a cancelled generation")
        XCTAssertLessThan(model.fraction, 1)

        await model.send("hello")
        await model.send("and again")
        XCTAssertNil(model.failure)
        XCTAssertEqual(model.history.count, 2)

        let image = try await model.generateDetached("a green cup")
        XCTAssertGreaterThan(image.width, 0)
        // the closure pattern, and a memory warning right after
        let viaClosure = try await model.generateWithCallback("a cup")
        XCTAssertEqual(viaClosure.seed, 5)
        model.memoryWarning()
        // two tasks at once: they queue on the engine
        async let one = engine.generate(prompt: "one", options: .init(steps: 2))
        async let two = engine.chat("two", options: .init(maxNewTokens: 4, temperature: 0))
        let (first, second) = try await (one, two)
        XCTAssertEqual(first.steps, 2)
        XCTAssertNotEqual(second.finishReason, .cancelled)
        // the memory policy changes at runtime
        await engine.setMemoryPolicy(.keepLoaded)
        let policy = await engine.memoryPolicy
        XCTAssertEqual(policy, .keepLoaded)
        // mocks
        XCTAssertEqual(try Mocks.image().seed, 42)
        XCTAssertEqual(Mocks.answer.finishReason, .stop)
        XCTAssertEqual(Mocks.imageOptions.sampler, .euler)
        XCTAssertEqual(Mocks.textOptions.minP, 0.05)
        XCTAssertEqual(Mocks.progress.count, 5)
        XCTAssertThrowsError(try RGBImage(width: 2, height: 2, pixels: [0]), "a throwing initialiser, not a crash")
        #if canImport(CoreGraphics)
        XCTAssertNotNil(try Mocks.image().image.cgImage())
        #endif
        // the pipeline from detached work (it is Sendable; its tasks run one at a time)
        let p = engine.manifest.pipeline, c = p.conditioning
        let pipeline = try MobileOPipeline(
            manifest: engine.manifest,
            tokenizer: BPETokenizer(tokenizerJSON: Self.export().appendingPathComponent(p.tokenizer.tokenizerJSON!)),
            runners: ModelRunners(llm: ZeroLLM(dim: c.llmHiddenSize, vocab: p.tokenizer.vocabSize, eos: p.tokenizer.id(ofRole: "eos")!),
                                  vision: nil, mcp: ZeroMCP(channels: c.captionChannels), dit: DampingDiT(),
                                  vae: ScaledDecoder(scalingFactor: 1) { z in Tensor(zeros: [3, z.shape[1] * 2, z.shape[2] * 2]) }))
        let detached = try await Task.detached { try await pipeline.generate(prompt: "a cup", options: .init(steps: 2)) }.value
        XCTAssertEqual(detached.image.width, image.width)

        try await engine.prewarm([.understanding])
        await engine.unloadResources()
    }
}
