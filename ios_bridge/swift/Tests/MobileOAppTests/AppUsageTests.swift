// The package used as an app uses it, compiled in the Swift 6 language mode (strict
// concurrency): a @MainActor view model that starts work in Tasks, iterates the engine's
// streams, runs a detached task and cancels.  Only the public API (no @testable).
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
    private let engine: MobileOEngine
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

// Minimal runners with the right shapes (an app would use CoreMLRunners.loaders).
final class ZeroLLM: LanguageModelRunner {
    let dim: Int, vocab: Int, eos: Int
    var produced = 0
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
    func velocity(latents: Tensor, timestep: Double, conditioning: Tensor) throws -> Tensor { latents.map { -0.5 * $0 } }
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
        return try MobileOEngine(manifest: manifest, tokenizer: tokenizer, loaders: loaders, reduceMemory: true)
    }

    @MainActor
    func testViewModelGeneratesAsksAndCancels() async throws {
        let engine = try Self.makeEngine()
        let model = MobileOViewModel(engine: engine)
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
        // the synchronous pipeline from detached work (it is Sendable; its calls block that thread)
        let p = engine.manifest.pipeline, c = p.conditioning
        let pipeline = try MobileOPipeline(
            manifest: engine.manifest,
            tokenizer: BPETokenizer(tokenizerJSON: Self.export().appendingPathComponent(p.tokenizer.tokenizerJSON!)),
            runners: ModelRunners(llm: ZeroLLM(dim: c.llmHiddenSize, vocab: p.tokenizer.vocabSize, eos: p.tokenizer.id(ofRole: "eos")!),
                                  vision: nil, mcp: ZeroMCP(channels: c.captionChannels), dit: DampingDiT(),
                                  vae: ScaledDecoder(scalingFactor: 1) { z in Tensor(zeros: [3, z.shape[1] * 2, z.shape[2] * 2]) }))
        let detached = try await Task.detached { try pipeline.generate(prompt: "a cup", options: .init(steps: 2)) }.value
        XCTAssertEqual(detached.image.width, image.width)

        try await engine.prewarm([.understanding])
        await engine.unloadResources()
    }
}
