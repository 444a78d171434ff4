import XCTest
@testable import MobileO

struct PipelineGolden: Decodable {
    struct Image: Decodable {
        var prompt: String?
        var instruction: String?
        var steps: Int
        var guidance: Double
        var ids: [Int]
        var initial: [Float]
        var latents: [Float]
        var unit: [Float]
        var rgb: [Int]
    }
    struct Understand: Decodable {
        var question: String
        var ids: [Int]
        var answerIds: [Int]
        var text: String
        enum CodingKeys: String, CodingKey { case question, ids, answerIds = "answer_ids", text }
    }
    var fakeEosAfter: Int
    var generate: [Image]
    var edit: [Image]
    var understand: [Understand]
    enum CodingKeys: String, CodingKey { case fakeEosAfter = "fake_eos_after", generate, edit, understand }
}

final class PipelineTests: XCTestCase {
    func makePipeline() throws -> (MobileOPipeline, FakeDiT) {
        let dir = try Golden.manifestURL()
        let m = try Manifest.load(from: dir)
        let tok = try BPETokenizer(tokenizerJSON: dir.appendingPathComponent(m.pipeline.tokenizer.tokenizerJSON!))
        let c = m.pipeline.conditioning
        let dit = FakeDiT()
        let runners = ModelRunners(
            llm: FakeLLM(dim: c.llmHiddenSize, vocab: m.pipeline.tokenizer.vocabSize, eos: m.pipeline.tokenizer.id(ofRole: "eos")!),
            vision: FakeVision(tokens: c.imageTokens, dim: c.llmHiddenSize),
            mcp: FakeMCP(outDim: c.captionChannels), dit: dit,
            vae: ScaledDecoder(scalingFactor: m.pipeline.vaeScalingFactor, raw: { try FakeVAE.decode($0) }))
        return (try MobileOPipeline(manifest: m, tokenizer: tok, runners: runners), dit)
    }

    func check(_ out: MobileOPipeline.GeneratedImage, _ g: PipelineGolden.Image, _ what: String) {
        XCTAssertEqual(out.promptIds, g.ids, "\(what): prompt ids")
        let dl = maxAbsDiff(out.latents.data, g.latents)
        let du = maxAbsDiff(out.unit.data, g.unit)
        let rgbDiff = zip(out.image.pixels, g.rgb).map { abs(Int($0) - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(dl, 1e-5, "\(what): final latents")
        XCTAssertLessThanOrEqual(du, 1e-5, "\(what): image in [0, 1]")
        XCTAssertLessThanOrEqual(rgbDiff, 1, "\(what): uint8 image")
        XCTAssertEqual(out.image.pixels.count, g.rgb.count)
        print("pipeline \(what): max |swift - python| latents \(dl), image \(du), uint8 \(rgbDiff)")
    }

    func testGenerateMatchesPythonPipeline() async throws {
        let g = try Golden.load(PipelineGolden.self, "pipeline.json")
        let (pipe, dit) = try makePipeline()
        for (i, c) in g.generate.enumerated() {
            let shape = pipe.manifest.pipeline.latentShape
            let steps = Recorder<Int>()
            dit.calls = 0
            let out = try await pipe.generate(prompt: c.prompt!, options: .init(steps: c.steps, guidance: c.guidance,
                                                                          initialLatents: Tensor(uncheckedShape: shape, data: c.initial))) { event in
                if case .step(let index, _, _) = event { steps.append(index) }
                return true
            }
            XCTAssertEqual(steps.items, Array(0..<c.steps))
            XCTAssertEqual(out.seed, nil, "initial latents given: no seed")
            XCTAssertEqual(out.steps, c.steps)
            XCTAssertEqual(dit.calls, c.steps)
            check(out, c, "generate[\(i)] \(c.prompt!.debugDescription)")
        }
    }

    func testEditMatchesPython() async throws {
        let g = try Golden.load(PipelineGolden.self, "pipeline.json")
        let (pipe, _) = try makePipeline()
        let pixels = fakePixels(pipe.manifest.pipeline.imagePreprocess.size)
        for c in g.edit {
            let out = try await pipe.edit(pixels: pixels, instruction: c.instruction!, options: .init(
                steps: c.steps, guidance: c.guidance, initialLatents: Tensor(uncheckedShape: pipe.manifest.pipeline.latentShape, data: c.initial)))
            check(out, c, "edit \(c.instruction!.debugDescription)")
        }
    }

    func testUnderstandMatchesPython() async throws {
        let g = try Golden.load(PipelineGolden.self, "pipeline.json")
        let (pipe, _) = try makePipeline()
        XCTAssertEqual(g.fakeEosAfter, FakeLLM.eosAfter)
        let pixels = fakePixels(pipe.manifest.pipeline.imagePreprocess.size)
        for c in g.understand {
            let streamed = Recorder<Int>(), pieces = Recorder<String>()
            let a = try await pipe.understand(pixels: pixels, question: c.question, options: .init(temperature: 0)) { event in
                if case .token(let id, let text) = event { streamed.append(id); pieces.append(text) }
                return true
            }
            XCTAssertEqual(pieces.items.joined(), a.text, "streamed pieces add up to the answer")
            XCTAssertEqual(a.finishReason, .stop, "the fake LLM ends with eos")
            XCTAssertEqual(a.promptIds, c.ids, "prompt ids of \(c.question)")
            XCTAssertEqual(a.ids, c.answerIds, c.question)
            XCTAssertEqual(streamed.items, c.answerIds)
            XCTAssertEqual(a.text, c.text, c.question)
        }
    }

    func testCancellation() async throws {
        let (pipe, dit) = try makePipeline()
        dit.calls = 0
        await assertThrowsAsync(try await pipe.generate(prompt: "a cup", options: .init(steps: 10)) { event in
            if case .step(let i, _, _) = event, i == 2 { return false }
            return true
        }) { e in XCTAssertEqual(e as? MobileOError, MobileOError.cancelled) }
        XCTAssertEqual(dit.calls, 3, "stops right after the cancelled step")
    }

    func testBadInputs() async throws {
        let (pipe, _) = try makePipeline()
        let pixels = fakePixels(pipe.manifest.pipeline.imagePreprocess.size)
        await assertThrowsAsync(try await pipe.understand(pixels: pixels, question: "and <image> again?")) { e in
            XCTAssertTrue("\(e)".contains("holds 2 image placeholders"), "\(e)")
        }
        // generation has no image: a typed "<image>" is an ordinary token, as in Python
        _ = try await pipe.generate(prompt: "an <image> token", options: .init(steps: 1))
        await assertThrowsAsync(try await pipe.generate(prompt: "   ")) { e in XCTAssertTrue("\(e)".contains("empty"), "\(e)") }
        await assertThrowsAsync(try await pipe.generate(prompt: String(repeating: "long ", count: 400))) { e in
            XCTAssertTrue("\(e)".contains("tokens"), "\(e)")
        }
        await assertThrowsAsync(try await pipe.edit(pixels: Tensor(zeros: [3, 5, 5]), instruction: "x")) { e in
            XCTAssertTrue("\(e)".contains("vision encoder takes"), "\(e)")
        }
        await assertThrowsAsync(try await pipe.generate(prompt: "a cup", options: .init(initialLatents: Tensor(zeros: [1, 2])))) { e in
            XCTAssertTrue("\(e)".contains("initial latents"), "\(e)")
        }
        // the seeded default noise is deterministic
        let a = try await pipe.generate(prompt: "a cup", options: .init(steps: 2, seed: 7))
        let b = try await pipe.generate(prompt: "a cup", options: .init(steps: 2, seed: 7))
        XCTAssertEqual(a.image, b.image)
        XCTAssertEqual(a.seed, 7, "the seed used is on the result")
        let euler = try await pipe.generate(prompt: "a cup", options: .init(steps: 3, sampler: .euler))
        XCTAssertEqual(euler.latents.shape, pipe.manifest.pipeline.latentShape)
    }
}

final class TokenSamplerTests: XCTestCase {
    func testGreedyAndSeededSampling() throws {
        let logits: [Float] = [0.1, 2.5, -1, 2.4]
        var greedy = try TokenSampler(temperature: 0)
        XCTAssertEqual(greedy.sample(logits), 1)
        XCTAssertEqual(TokenSampler.argmax([1, 3, 3]), 1, "first maximum, as numpy")
        var a = try TokenSampler(temperature: 0.8, seed: 3), b = try TokenSampler(temperature: 0.8, seed: 3)
        let drawsA = (0..<50).map { _ in a.sample(logits) }, drawsB = (0..<50).map { _ in b.sample(logits) }
        XCTAssertEqual(drawsA, drawsB, "seeded")
        XCTAssertEqual(Set(drawsA).isSubset(of: [0, 1, 2, 3]), true)
        XCTAssertTrue(drawsA.contains(3) && drawsA.contains(1))
        var nucleus = try TokenSampler(temperature: 1, topP: 0.1, seed: 1)
        XCTAssertTrue((0..<20).allSatisfy { _ in nucleus.sample(logits) == 1 }, "top-p keeps only the best token")
        var top1 = try TokenSampler(temperature: 5, topK: 1, seed: 2)
        XCTAssertTrue((0..<20).allSatisfy { _ in top1.sample(logits) == 1 }, "top-k 1 is greedy at any temperature")
        var top2 = try TokenSampler(temperature: 5, topK: 2, seed: 2)
        XCTAssertEqual(Set((0..<50).map { _ in top2.sample(logits) }), [1, 3], "top-k 2 keeps the two best")
    }
}

/// A thread-safe list for values recorded from `@Sendable` progress handlers.
final class Recorder<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [T] = []
    func append(_ v: T) { lock.withLock { values.append(v) } }
    var items: [T] { lock.withLock { values } }
}

/// `XCTAssertThrowsError` for async expressions.
func assertThrowsAsync<T>(_ expression: @autoclosure () async throws -> T, file: StaticString = #filePath, line: UInt = #line,
                          _ check: (Error) -> Void = { _ in }) async {
    do {
        _ = try await expression()
        XCTFail("expected an error", file: file, line: line)
    } catch {
        check(error)
    }
}
