import Foundation
import XCTest
@testable import MobileO

/// Which fake runners are alive (counted in init / deinit), which were ever loaded, and the
/// batch sizes the DiT saw.
final class RunnerTracker: @unchecked Sendable {
    private let lock = NSLock()
    private var live: [MobileOComponent: Int] = [:]
    private(set) var everLoaded = Set<MobileOComponent>()
    private(set) var maxHeavyAlive = 0
    private(set) var ditBatches = [Int]()
    private(set) var mcpCalls = 0

    func born(_ c: MobileOComponent) {
        lock.lock(); defer { lock.unlock() }
        live[c, default: 0] += 1
        everLoaded.insert(c)
        let heavy = [MobileOComponent.llm, .dit, .vae].reduce(0) { $0 + live[$1, default: 0] }
        maxHeavyAlive = max(maxHeavyAlive, heavy)
    }
    func died(_ c: MobileOComponent) { lock.lock(); live[c, default: 0] -= 1; lock.unlock() }
    func dit(batch: Int) { lock.lock(); ditBatches.append(batch); lock.unlock() }
    func mcpCalled() { lock.lock(); mcpCalls += 1; lock.unlock() }
    var alive: Set<MobileOComponent> { lock.lock(); defer { lock.unlock() }; return Set(live.filter { $0.value > 0 }.keys) }
    func reset() { lock.lock(); everLoaded = []; maxHeavyAlive = 0; ditBatches = []; mcpCalls = 0; lock.unlock() }
}

final class TrackedLLM: LanguageModelRunner, @unchecked Sendable {
    let inner: FakeLLM, tracker: RunnerTracker
    init(_ inner: FakeLLM, _ tracker: RunnerTracker) { self.inner = inner; self.tracker = tracker; tracker.born(.llm) }
    deinit { tracker.died(.llm) }
    func hiddenStates(_ prompt: [PromptSegment], count: Int) throws -> [Tensor] { try inner.hiddenStates(prompt, count: count) }
    func prefill(_ prompt: [PromptSegment]) throws -> [Float] { try inner.prefill(prompt) }
    func decode(_ token: Int) throws -> [Float] { try inner.decode(token) }
}

final class TrackedVision: VisionRunner, @unchecked Sendable {
    let inner: FakeVision, tracker: RunnerTracker
    init(_ inner: FakeVision, _ tracker: RunnerTracker) { self.inner = inner; self.tracker = tracker; tracker.born(.vision) }
    deinit { tracker.died(.vision) }
    func imageEmbeddings(_ pixels: Tensor) throws -> Tensor { try inner.imageEmbeddings(pixels) }
}

final class TrackedMCP: ConditioningRunner, @unchecked Sendable {
    let inner: FakeMCP, tracker: RunnerTracker
    init(_ inner: FakeMCP, _ tracker: RunnerTracker) { self.inner = inner; self.tracker = tracker; tracker.born(.mcp) }
    deinit { tracker.died(.mcp) }
    func conditioning(_ hiddenStates: [Tensor]) throws -> Tensor { tracker.mcpCalled(); return try inner.conditioning(hiddenStates) }
}

final class TrackedDiT: DenoiserRunner, @unchecked Sendable {
    let inner = FakeDiT(), tracker: RunnerTracker
    init(_ tracker: RunnerTracker) { self.tracker = tracker; tracker.born(.dit) }
    deinit { tracker.died(.dit) }
    func velocity(latents: Tensor, timestep: Double, conditioning: Tensor) throws -> Tensor {
        tracker.dit(batch: latents.shape[0])
        return try inner.velocity(latents: latents, timestep: timestep, conditioning: conditioning)
    }
}

final class TrackedVAE: DecoderRunner, @unchecked Sendable {
    let inner: ScaledDecoder, tracker: RunnerTracker
    init(_ inner: ScaledDecoder, _ tracker: RunnerTracker) { self.inner = inner; self.tracker = tracker; tracker.born(.vae) }
    deinit { tracker.died(.vae) }
    func decode(_ latents: Tensor) async throws -> Tensor { try await inner.decode(latents) }
}

/// A `MobileOEngine` over the tracked fake runners and the golden export's manifest and tokenizer.
func makeTrackedEngine(reduceMemory: Bool) throws -> (MobileOEngine, RunnerTracker) {
    let dir = try Golden.manifestURL()
    let m = try Manifest.load(from: dir)
    let tok = try BPETokenizer(tokenizerJSON: dir.appendingPathComponent(m.pipeline.tokenizer.tokenizerJSON!))
    let c = m.pipeline.conditioning, vocab = m.pipeline.tokenizer.vocabSize
    let eos = m.pipeline.tokenizer.id(ofRole: "eos")!, factor = m.pipeline.vaeScalingFactor
    let t = RunnerTracker()
    let loaders = RunnerLoaders(
        llm: { TrackedLLM(FakeLLM(dim: c.llmHiddenSize, vocab: vocab, eos: eos), t) },
        vision: { TrackedVision(FakeVision(tokens: c.imageTokens, dim: c.llmHiddenSize), t) },
        mcp: { TrackedMCP(FakeMCP(outDim: c.captionChannels), t) },
        dit: { TrackedDiT(t) },
        vae: { TrackedVAE(ScaledDecoder(scalingFactor: factor, raw: { try FakeVAE.decode($0) }), t) })
    return (try MobileOEngine(manifest: m, tokenizer: tok, loaders: loaders,
                              memoryPolicy: reduceMemory ? .reduceMemory : .keepLoaded), t)
}

final class EngineTests: XCTestCase {
    func makeEngine(reduceMemory: Bool) throws -> (MobileOEngine, RunnerTracker) {
        try makeTrackedEngine(reduceMemory: reduceMemory)
    }

    func testEngineMatchesPythonWithReduceMemory() async throws {
        let g = try Golden.load(PipelineGolden.self, "pipeline.json")
        let (engine, t) = try makeEngine(reduceMemory: true)
        let shape = engine.manifest.pipeline.latentShape
        let pixels = fakePixels(engine.manifest.pipeline.imagePreprocess.size)
        for c in g.generate {
            let out = try await engine.generate(prompt: c.prompt!, options: .init(
                steps: c.steps, guidance: c.guidance, initialLatents: Tensor(uncheckedShape: shape, data: c.initial)))
            XCTAssertEqual(out.promptIds, c.ids)
            XCTAssertLessThanOrEqual(maxAbsDiff(out.latents.data, c.latents), 1e-5)
            XCTAssertLessThanOrEqual(maxAbsDiff(out.unit.data, c.unit), 1e-5)
        }
        XCTAssertFalse(t.everLoaded.contains(.vision), "generation never loads the vision encoder")
        for c in g.edit {
            let out = try await engine.edit(pixels: pixels, instruction: c.instruction!, options: .init(
                steps: c.steps, guidance: c.guidance, initialLatents: Tensor(uncheckedShape: shape, data: c.initial)))
            XCTAssertEqual(out.promptIds, c.ids)
            XCTAssertLessThanOrEqual(maxAbsDiff(out.latents.data, c.latents), 1e-5)
        }
        XCTAssertEqual(t.maxHeavyAlive, 1, "reduceMemory: at most one of LLM / DiT / VAE loaded at a time")
        let loaded = await engine.loadedComponents
        XCTAssertEqual(loaded, [])
        XCTAssertEqual(t.alive, [], "every runner released")
        for c in g.understand {
            var streamed = [Int](), answer: MobileOEngine.Answer?
            for try await event in engine.understandingEvents(pixels: pixels, question: c.question, options: .init(temperature: 0)) {
                switch event {
                case .progress(.token(let id, _)): streamed.append(id)
                case .progress: break
                case .finished(let a): answer = a
                }
            }
            XCTAssertEqual(streamed, c.answerIds)
            XCTAssertEqual(answer?.text, c.text)
            XCTAssertEqual(answer?.promptIds, c.ids)
        }
    }

    func testConcurrentTasksQueueAndKeepReduceMemory() async throws {
        let (engine, t) = try makeEngine(reduceMemory: true)
        let pixels = fakePixels(engine.manifest.pipeline.imagePreprocess.size)
        async let a = engine.generate(prompt: "a cup", options: .init(steps: 3, seed: 1))
        async let b = engine.understand(pixels: pixels, question: "What is this?", options: .init(temperature: 0))
        async let c = engine.edit(pixels: pixels, instruction: "make it blue", options: .init(steps: 3, seed: 1))
        async let d = engine.chat("hello", options: .init(temperature: 0))
        let (x, y, z, w) = try await (a, b, c, d)
        XCTAssertEqual(x.latents.shape, engine.manifest.pipeline.latentShape)
        XCTAssertFalse(y.ids.isEmpty)
        XCTAssertEqual(z.latents.shape, x.latents.shape)
        XCTAssertFalse(w.ids.isEmpty)
        XCTAssertEqual(t.maxHeavyAlive, 1, "one task at a time, one big model at a time")
        XCTAssertEqual(t.alive, [])
    }

    func testUnderstandingLoadsOnlyVisionAndLLM() async throws {
        let (engine, t) = try makeEngine(reduceMemory: false)
        let pixels = fakePixels(engine.manifest.pipeline.imagePreprocess.size)
        _ = try await engine.understand(pixels: pixels, question: "What is this?", options: .init(temperature: 0))
        XCTAssertEqual(t.everLoaded, [.vision, .llm])
        let loaded = await engine.loadedComponents
        XCTAssertEqual(loaded, [.vision, .llm], "kept loaded without reduceMemory")
        await engine.unloadResources()
        XCTAssertEqual(t.alive, [])
        // without reduceMemory a generation keeps its models
        _ = try await engine.generate(prompt: "a cup", options: .init(steps: 2))
        let after = await engine.loadedComponents
        XCTAssertEqual(after, [.llm, .mcp, .dit, .vae])
    }

    func testPrewarm() async throws {
        let (engine, t) = try makeEngine(reduceMemory: false)
        try await engine.prewarm([.understanding])
        let loaded = await engine.loadedComponents
        XCTAssertEqual(loaded, [.vision, .llm])
        let (lean, lt) = try makeEngine(reduceMemory: true)
        try await lean.prewarm()
        XCTAssertEqual(lt.everLoaded, Set(MobileOComponent.allCases))
        XCTAssertEqual(lt.maxHeavyAlive, 1)
        let none = await lean.loadedComponents
        XCTAssertEqual(none, [])
        _ = t
    }

    func testCancellationThroughTheTask() async throws {
        let (engine, t) = try makeEngine(reduceMemory: false)
        // stop iterating the stream after step 2: the generation is cancelled
        var seen = 0
        for try await event in engine.generationEvents(prompt: "a cup", options: .init(steps: 50)) {
            if case .progress(.step(let i, _, _)) = event, i == 2 { seen = i; break }
        }
        XCTAssertEqual(seen, 2)
        try await engine.prewarm([.chat])  // queued behind the cancelled generation: it has ended
        XCTAssertLessThan(t.ditBatches.count, 50, "stopped early")
        // cancelling the Task that awaits it
        t.reset()
        let task = Task { try await engine.generate(prompt: "a cup", options: .init(steps: 500)) }
        task.cancel()
        do {
            _ = try await task.value
            XCTFail("expected cancellation")
        } catch let e as MobileOError {
            XCTAssertEqual(e, MobileOError.cancelled)
        }
        XCTAssertLessThan(t.ditBatches.count, 500)
    }

    func testGuidanceOneSkipsTheUnconditionalBatch() async throws {
        let (engine, t) = try makeEngine(reduceMemory: false)
        let one = try await engine.generate(prompt: "a cup", options: .init(steps: 4, guidance: 1, seed: 3))
        XCTAssertEqual(t.ditBatches, [1, 1, 1, 1])
        XCTAssertEqual(t.mcpCalls, 1, "no unconditional MCP at guidance 1")
        t.reset()
        let near = try await engine.generate(prompt: "a cup", options: .init(steps: 4, guidance: 1.000001, seed: 3))
        XCTAssertEqual(t.ditBatches, [2, 2, 2, 2])
        XCTAssertLessThanOrEqual(maxAbsDiff(one.latents.data, near.latents.data), 1e-4)
        // the unconditional MCP is cached per prompt length: a prompt of the same length needs one call
        t.reset()
        _ = try await engine.generate(prompt: "a cup", options: .init(steps: 1, guidance: 2, seed: 3))
        XCTAssertEqual(t.mcpCalls, 1)
    }

    /// Python's MultimodalPrompt.build counts the image's tokens against the limit: a question
    /// that fits alone but not with the image fails before any model runs.
    func testPromptLimitCountsImageTokens() async throws {
        let (engine, t) = try makeEngine(reduceMemory: false)
        let m = engine.manifest
        let dir = try Golden.manifestURL()
        let tok = try BPETokenizer(tokenizerJSON: dir.appendingPathComponent(m.pipeline.tokenizer.tokenizerJSON!))
        let templates = PromptTemplates(m.pipeline.prompts)
        let limit = m.pipeline.prompts.maxPromptTokens, n = m.pipeline.conditioning.imageTokens
        XCTAssertGreaterThan(n, 1)
        var words = 1, question = "x"
        while true {  // the longest question whose ids (placeholder included) fit the limit
            let q = String(repeating: "cup ", count: words)
            if try tok.encode(templates.understanding(q)).count > limit { break }
            question = q; words += 1
        }
        let alone = try tok.encode(templates.understanding(question)).count
        XCTAssertLessThanOrEqual(alone, limit)
        XCTAssertGreaterThan(alone - 1 + n, limit)
        let pixels = fakePixels(m.pipeline.imagePreprocess.size)
        do {
            _ = try await engine.understand(pixels: pixels, question: question)
            XCTFail("expected the prompt limit")
        } catch let e as MobileOError {
            XCTAssertTrue(e.message.contains("\(alone - 1 + n) tokens with its template and the \(n) image tokens; the limit is \(limit)"), e.message)
        }
        do {
            _ = try await engine.edit(pixels: pixels, instruction: question)
            XCTFail("expected the prompt limit")
        } catch let e as MobileOError {
            XCTAssertTrue(e.message.contains("image tokens; the limit is \(limit)"), e.message)
        }
        XCTAssertEqual(t.everLoaded, [], "nothing ran")
        // the synchronous pipeline checks the same
        let pipe = try MobileOPipeline(manifest: m, tokenizer: tok, runners: ModelRunners(
            llm: FakeLLM(dim: 4, vocab: 8, eos: 0), vision: nil, mcp: FakeMCP(outDim: 2), dit: FakeDiT(),
            vae: ScaledDecoder(scalingFactor: 1, raw: { try FakeVAE.decode($0) })))
        await assertThrowsAsync(try await pipe.understand(pixels: pixels, question: question)) { e in
            XCTAssertTrue("\(e)".contains("image tokens; the limit"), "\(e)")
        }
        // a question n - 1 tokens shorter fits
        let short = String(repeating: "cup ", count: max(1, words - n - 2))
        XCTAssertLessThanOrEqual(try tok.encode(templates.understanding(short)).count - 1 + n, limit)
        _ = try await engine.understand(pixels: pixels, question: short, options: .init(maxNewTokens: 2, temperature: 0))
    }
}

final class ImageOrientationTests: XCTestCase {
    func testOrientMatchesEXIF() {
        let t = Tensor(uncheckedShape: [1, 3, 3], data: [1, 2, 3, 4, 5, 6, 7, 8, 9])
        let expected: [ImageOrientation: [Float]] = [
            .up: [1, 2, 3, 4, 5, 6, 7, 8, 9],
            .upMirrored: [3, 2, 1, 6, 5, 4, 9, 8, 7],
            .down: [9, 8, 7, 6, 5, 4, 3, 2, 1],
            .downMirrored: [7, 8, 9, 4, 5, 6, 1, 2, 3],
            .leftMirrored: [1, 4, 7, 2, 5, 8, 3, 6, 9],
            .right: [7, 4, 1, 8, 5, 2, 9, 6, 3],
            .rightMirrored: [9, 6, 3, 8, 5, 2, 7, 4, 1],
            .left: [3, 6, 9, 2, 5, 8, 1, 4, 7],
        ]
        for o in ImageOrientation.allCases {
            XCTAssertEqual(ImagePreprocess.orient(t, o).data, expected[o], "\(o)")
        }
        let rgb = Tensor(uncheckedShape: [3, 4, 4], data: (0..<48).map(Float.init))
        XCTAssertEqual(ImagePreprocess.orient(ImagePreprocess.orient(rgb, .right), .left), rgb, "right then left is identity")
        XCTAssertEqual(ImagePreprocess.orient(ImagePreprocess.orient(rgb, .down), .down), rgb)
    }
}

final class ChatTests: XCTestCase {
    func testTextChatWithHistoryLoadsOnlyTheLLM() async throws {
        let (engine, t) = try makeTrackedEngine(reduceMemory: false)
        let m = engine.manifest
        let dir = try Golden.manifestURL()
        let tok = try BPETokenizer(tokenizerJSON: dir.appendingPathComponent(m.pipeline.tokenizer.tokenizerJSON!))
        let templates = PromptTemplates(m.pipeline.prompts)
        XCTAssertEqual(try templates.conversation("hi", history: []), templates.chat("hi"))
        let history = [ChatTurn(user: "hi", assistant: "Hello!"), ChatTurn(user: "2+2?", assistant: "4")]
        let text = try templates.conversation("and 3+3?", history: history)
        let sys = "<|im_start|>system\n\(m.pipeline.prompts.system)<|im_end|>\n"
        XCTAssertEqual(text, sys + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
                       + "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
                       + "<|im_start|>user\nand 3+3?<|im_end|>\n<|im_start|>assistant\n")
        var pieces = ""
        var answer: MobileOEngine.Answer?
        for try await event in engine.chatEvents("and 3+3?", history: history, options: .init(temperature: 0)) {
            switch event {
            case .progress(.token(_, let p)): pieces += p
            case .progress: break
            case .finished(let a): answer = a
            }
        }
        XCTAssertEqual(answer?.promptIds, try tok.encode(text))
        XCTAssertEqual(answer?.ids.count, FakeLLM.eosAfter)
        XCTAssertEqual(pieces, answer?.text)
        XCTAssertEqual(t.everLoaded, [.llm])
        do {
            _ = try await engine.chat("x", history: [ChatTurn(user: String(repeating: "long ", count: 600), assistant: "ok")])
            XCTFail("expected the prompt limit")
        } catch let e as MobileOError {
            XCTAssertTrue(e.message.contains("the limit is"), e.message)
        }
    }
}
