import Foundation
import XCTest
@testable import MobileO

// The goals with fake runners whose denoising steps take 100 ms: a memory warning
// during a denoise frees the idle models within one step; cancelling a running or a queued
// task returns within one step.  The tests assert the order of events (never a tight wall
// clock, which would flake on a loaded machine) and print the measured times.

/// An ordered log of what happened, with times.
final class EventLog: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [(String, Date)] = []
    func add(_ e: String) { lock.withLock { entries.append((e, Date())) } }
    var names: [String] { lock.withLock { entries.map(\.0) } }
    func time(_ e: String) -> Date? { lock.withLock { entries.first { $0.0 == e }?.1 } }
    func index(_ e: String) -> Int? { names.firstIndex(of: e) }
}

/// A runner that logs its death (when the engine frees it).
class Logged: @unchecked Sendable {
    let name: String, log: EventLog
    init(_ name: String, _ log: EventLog) { self.name = name; self.log = log; log.add("load \(name)") }
    deinit { log.add("free \(name)") }
}

final class SlowLLM: Logged, LanguageModelRunner, @unchecked Sendable {
    let inner: FakeLLM
    init(_ inner: FakeLLM, _ log: EventLog) { self.inner = inner; super.init("llm", log) }
    func hiddenStates(_ prompt: [PromptSegment], count: Int) async throws -> [Tensor] { try inner.hiddenStates(prompt, count: count) }
    func prefill(_ prompt: [PromptSegment]) async throws -> [Float] { try inner.prefill(prompt) }
    func decode(_ token: Int) async throws -> [Float] { try inner.decode(token) }
}

final class SlowMCP: Logged, ConditioningRunner, @unchecked Sendable {
    let inner: FakeMCP
    init(_ inner: FakeMCP, _ log: EventLog) { self.inner = inner; super.init("mcp", log) }
    func conditioning(_ hiddenStates: [Tensor]) async throws -> Tensor { try inner.conditioning(hiddenStates) }
}

/// Each DiT call takes `stepNanoseconds` (a cancellable sleep, as Core ML's async prediction).
final class SlowDiT: Logged, DenoiserRunner, @unchecked Sendable {
    let inner = FakeDiT(), stepNanoseconds: UInt64
    private let lock = NSLock()
    private var _calls = 0
    var calls: Int { lock.withLock { _calls } }
    init(_ log: EventLog, stepNanoseconds: UInt64) { self.stepNanoseconds = stepNanoseconds; super.init("dit", log) }
    func velocity(latents: Tensor, timestep: Double, conditioning: Tensor) async throws -> Tensor {
        lock.withLock { _calls += 1 }
        try await Task.sleep(nanoseconds: stepNanoseconds)
        return try inner.velocity(latents: latents, timestep: timestep, conditioning: conditioning)
    }
}

final class SlowVAE: Logged, DecoderRunner, @unchecked Sendable {
    let inner: ScaledDecoder
    init(_ inner: ScaledDecoder, _ log: EventLog) { self.inner = inner; super.init("vae", log) }
    func decode(_ latents: Tensor) async throws -> Tensor { try await inner.decode(latents) }
}

final class ResponsivenessTests: XCTestCase {
    static let step: UInt64 = 100_000_000  // 100 ms per denoising step

    func makeEngine(_ log: EventLog, dit: @escaping @Sendable () -> SlowDiT) throws -> MobileOEngine {
        let dir = try Golden.manifestURL()
        let m = try Manifest.load(from: dir)
        let tok = try BPETokenizer(tokenizerJSON: dir.appendingPathComponent(m.pipeline.tokenizer.tokenizerJSON!))
        let c = m.pipeline.conditioning, vocab = m.pipeline.tokenizer.vocabSize
        let eos = m.pipeline.tokenizer.id(ofRole: "eos")!, factor = m.pipeline.vaeScalingFactor
        let loaders = RunnerLoaders(
            llm: { SlowLLM(FakeLLM(dim: c.llmHiddenSize, vocab: vocab, eos: eos), log) },
            vision: nil,
            mcp: { SlowMCP(FakeMCP(outDim: c.captionChannels), log) },
            dit: dit,
            vae: { SlowVAE(ScaledDecoder(scalingFactor: factor, raw: { try FakeVAE.decode($0) }), log) })
        return try MobileOEngine(manifest: m, tokenizer: tok, loaders: loaders, memoryPolicy: .keepLoaded)
    }

    /// Wait for `condition` with a generous deadline (an observed state, not a guessed delay).
    func waitFor(_ what: String, _ condition: () async -> Bool) async throws {
        let deadline = Date().addingTimeInterval(30)
        while !(await condition()) {
            guard Date() < deadline else { throw XCTSkip("timed out waiting for \(what)") }
            try await Task.sleep(nanoseconds: 1_000_000)
        }
    }

    func ms(_ a: Date, _ b: Date) -> String { String(format: "%.1f", b.timeIntervalSince(a) * 1000) }

    /// A generation started in a Task, its step events logged in `steps` (in order with anything
    /// else logged there), returned once step `reached` is seen.
    func startGenerating(_ engine: MobileOEngine, _ options: ImageOptions, logging steps: EventLog,
                         reached: Int) async throws -> Task<GeneratedImage, Error> {
        let task = Task { try await engine.generate(prompt: "a cup", options: options) { e in
            if case .step(let i, _, _) = e { steps.add("step \(i)") }
        } }
        try await waitFor("step \(reached)") { steps.index("step \(reached)") != nil }
        return task
    }

    func testMemoryWarningDuringDenoiseFreesIdleModelsWithinAStep() async throws {
        let log = EventLog()
        let engine = try makeEngine(log) { SlowDiT(log, stepNanoseconds: Self.step) }
        // step events are logged by the engine's callback, in order with the frees
        let task = try await startGenerating(engine, .init(steps: 6, seed: 1), logging: log, reached: 1)
        let warnedAt = Date()
        log.add("warning")
        await engine.unloadResources()  // what an app does on a memory warning
        _ = try await task.value
        let names = log.names
        // k: the last step done before the warning; the idle models (LLM, MCP) must be freed
        // before step k + 2 ends (within the step that was running); the DiT after its stage,
        // the VAE loaded for its stage only; nothing stays loaded
        let warning = try XCTUnwrap(log.index("warning"))
        let k = try XCTUnwrap(names[..<warning].last(where: { $0.hasPrefix("step ") }).flatMap { Int($0.dropFirst(5)) })
        let bound = try XCTUnwrap(log.index("step \(k + 2)"), "\(names)")
        XCTAssertLessThan(try XCTUnwrap(log.index("free llm")), bound, "\(names)")
        XCTAssertLessThan(try XCTUnwrap(log.index("free mcp")), bound, "\(names)")
        XCTAssertLessThan(try XCTUnwrap(log.index("step 5")), try XCTUnwrap(log.index("free dit")), "\(names)")
        XCTAssertLessThan(try XCTUnwrap(log.index("free dit")), try XCTUnwrap(log.index("load vae")), "\(names)")
        XCTAssertNotNil(log.index("free vae"), "\(names)")
        let loaded = await engine.loadedComponents
        XCTAssertEqual(loaded, [])
        let freed = [log.time("free llm")!, log.time("free mcp")!].max()!
        print("responsiveness: a memory warning during a denoise (100 ms steps) freed the idle models in \(ms(warnedAt, freed)) ms (goal <= 150 ms)")
    }

    func testCancellingARunningTaskReturnsWithinAStep() async throws {
        let log = EventLog()
        let dit = SlowDiT(log, stepNanoseconds: Self.step)
        let engine = try makeEngine(log) { dit }
        let task = try await startGenerating(engine, .init(steps: 50), logging: EventLog(), reached: 1)
        let callsAtCancel = dit.calls
        let cancelledAt = Date()
        task.cancel()
        await assertThrowsAsync(try await task.value) { e in XCTAssertEqual(e as? MobileOError, .cancelled) }
        let returned = Date()
        XCTAssertLessThanOrEqual(dit.calls, callsAtCancel + 1, "returned within the step it was in")
        print("responsiveness: cancelling a running task (100 ms steps) returned in \(ms(cancelledAt, returned)) ms (goal <= 100 ms)")
    }

    func testCancellingAQueuedTaskReturnsAtOnce() async throws {
        let log = EventLog()
        let dit = SlowDiT(log, stepNanoseconds: Self.step)
        let engine = try makeEngine(log) { dit }
        let running = try await startGenerating(engine, .init(steps: 50), logging: EventLog(), reached: 0)
        let queued = Task { try await engine.chat("hello", options: .init(maxNewTokens: 2, temperature: 0)) }
        try await waitFor("the second task to queue") { await engine.queuedTaskCount == 1 }
        let callsAtCancel = dit.calls
        let cancelledAt = Date()
        queued.cancel()
        await assertThrowsAsync(try await queued.value) { e in XCTAssertEqual(e as? MobileOError, .cancelled) }
        let returned = Date()
        XCTAssertLessThan(dit.calls, 50, "the queued task returned while the running one was still running (\(callsAtCancel) steps at the cancel)")
        let queuedAfter = await engine.queuedTaskCount
        XCTAssertEqual(queuedAfter, 0, "it left the queue")
        running.cancel()
        _ = try? await running.value
        print("responsiveness: cancelling a queued task (100 ms steps ahead of it) returned in \(ms(cancelledAt, returned)) ms (goal <= 100 ms)")
    }

    func testMemoryPolicyChangesAtRuntimeAndLoadResourcesLoadsAll() async throws {
        let log = EventLog()
        let engine = try makeEngine(log) { SlowDiT(log, stepNanoseconds: 0) }
        await engine.setMemoryPolicy(.reduceMemory)
        try await engine.loadResources(for: [.generation])
        let all = await engine.loadedComponents
        XCTAssertEqual(all, [.llm, .mcp, .dit, .vae], "loadResources loads everything asked, whatever the policy")
        _ = try await engine.generate(prompt: "a cup", options: .init(steps: 2))
        let none = await engine.loadedComponents
        XCTAssertEqual(none, [], "under reduceMemory each stage frees its model")
        await engine.setMemoryPolicy(.keepLoaded)
        _ = try await engine.generate(prompt: "a cup", options: .init(steps: 2))
        let kept = await engine.loadedComponents
        XCTAssertEqual(kept, [.llm, .mcp, .dit, .vae])
        await engine.setMemoryPolicy(.reduceMemory)
        let freed = await engine.loadedComponents
        XCTAssertEqual(freed, [], "switching to reduceMemory frees the idle models at once")
    }

    func testUnconditionalCacheIsBoundedAndFreedWithTheMCP() async throws {
        let log = EventLog()
        let engine = try makeEngine(log) { SlowDiT(log, stepNanoseconds: 0) }
        for n in 1...8 {
            _ = try await engine.generate(prompt: String(repeating: "cup ", count: n), options: .init(steps: 1, guidance: 2))
        }
        let cached = await engine.cachedUnconditionalCount
        XCTAssertEqual(cached, PipelineCore.unconditionalLimit)
        await engine.unloadResources([.mcp])
        let after = await engine.cachedUnconditionalCount
        XCTAssertEqual(after, 0)
    }

    func testAnswersCarryAFinishReasonAndTheContextIsCheckedFirst() async throws {
        let log = EventLog()
        let engine = try makeEngine(log) { SlowDiT(log, stepNanoseconds: 0) }
        let stop = try await engine.chat("hello", options: .init(temperature: 0))
        XCTAssertEqual(stop.finishReason, .stop)
        let length = try await engine.chat("hello", options: .init(maxNewTokens: 2, temperature: 0))
        XCTAssertEqual(length.finishReason, .length)
        XCTAssertEqual(length.ids.count, 2)
        let context = engine.manifest.pipeline.hostInputs.contextLength
        let before = log.names
        await assertThrowsAsync(try await engine.chat("hello", options: .init(maxNewTokens: context))) { e in
            XCTAssertTrue("\(e)".contains("context of \(context) tokens"), "\(e)")
        }
        XCTAssertEqual(log.names, before, "nothing loaded or ran")
        XCTAssertGreaterThan(try engine.tokenCount("a red cup on a table"), 3)
    }
}

extension MobileOEngine {
    /// Tasks waiting for their turn (tests observe the queue with it).
    var queuedTaskCount: Int { queue.waitingCount }
    /// Entries in the unconditional-conditioning cache.
    var cachedUnconditionalCount: Int { core.cachedUnconditionalCount }
}
