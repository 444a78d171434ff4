import Foundation

// The Swift-concurrency API: an actor that loads each model when a task needs it, runs the
// tasks as `async throws` functions (or streams their progress), and stops at the next step
// when the calling Task is cancelled.

/// The models a task runs.
public enum MobileOComponent: String, Sendable, CaseIterable, Hashable {
    case vision, llm, mcp, dit, vae
}

/// What the app asks for; each needs its own components.
public enum MobileOTask: String, Sendable, CaseIterable, Hashable {
    case generation, editing, understanding, chat

    /// In the order they run.
    public var components: [MobileOComponent] {
        switch self {
        case .generation: return [.llm, .mcp, .dit, .vae]
        case .editing: return [.vision, .llm, .mcp, .dit, .vae]
        case .understanding: return [.vision, .llm]
        case .chat: return [.llm]
        }
    }
}

/// How to load each runner: called by `MobileOEngine` when a stage needs it (and again after
/// it was unloaded).  `CoreMLRunners.loaders(manifest:folder:)` gives the Core ML ones; tests
/// pass fakes.  A loader must return a fresh runner the engine then owns.
public struct RunnerLoaders: Sendable {
    public var llm: @Sendable () async throws -> LanguageModelRunner
    public var vision: (@Sendable () async throws -> VisionRunner)?
    public var mcp: @Sendable () async throws -> ConditioningRunner
    public var dit: @Sendable () async throws -> DenoiserRunner
    public var vae: @Sendable () async throws -> DecoderRunner

    public init(llm: @escaping @Sendable () async throws -> LanguageModelRunner,
                vision: (@Sendable () async throws -> VisionRunner)?,
                mcp: @escaping @Sendable () async throws -> ConditioningRunner,
                dit: @escaping @Sendable () async throws -> DenoiserRunner,
                vae: @escaping @Sendable () async throws -> DecoderRunner) {
        self.llm = llm; self.vision = vision; self.mcp = mcp; self.dit = dit; self.vae = vae
    }
}

/// One event of a streamed task: progress, then the result last.
public enum MobileOEvent<Output: Sendable>: Sendable {
    case progress(MobileOPipeline.Progress)
    case finished(Output)
}

/// Mobile-O for apps: `generate`, `edit` and `understand` as `async throws` functions on an
/// actor (so a `@MainActor` view model can await them, or iterate `...Events` streams), with
/// models loaded when a task first needs them.
///
/// - Tasks called concurrently run one after another, in call order.
/// - Cancellation: cancel the awaiting Task (or stop iterating a stream); the task throws
///   `MobileOError.cancelled` after the current step or token.
/// - Memory: `reduceMemory: true` unloads every model right after its stage, so at most one
///   of the LLM, DiT and VAE is loaded at any time (slower: each task reloads them; on iOS
///   keep it on for the 4 GB devices).  Otherwise models stay loaded until
///   `unloadResources()` (call it on a memory warning).
/// - `prewarm(_:)` loads (and, with `reduceMemory`, unloads again) a task's models ahead of
///   use, so the first task does not pay Core ML's compilation and specialisation.
public actor MobileOEngine {
    public nonisolated let manifest: Manifest
    public nonisolated let reduceMemory: Bool
    private let core: PipelineCore
    private let loaders: RunnerLoaders
    private var llm: LanguageModelRunner?
    private var vision: VisionRunner?
    private var mcp: ConditioningRunner?
    private var dit: DenoiserRunner?
    private var vae: DecoderRunner?

    public typealias ImageOptions = MobileOPipeline.ImageOptions
    public typealias TextOptions = MobileOPipeline.TextOptions
    public typealias Progress = MobileOPipeline.Progress
    public typealias GeneratedImage = MobileOPipeline.GeneratedImage
    public typealias Answer = MobileOPipeline.Answer

    /// Checks the tokenizer against the manifest; loads nothing.
    public init(manifest: Manifest, tokenizer: TextTokenizer, loaders: RunnerLoaders, reduceMemory: Bool = false) throws {
        self.manifest = manifest
        self.reduceMemory = reduceMemory
        self.loaders = loaders
        self.core = try PipelineCore(manifest: manifest, tokenizer: tokenizer)
    }

    // MARK: - one task at a time

    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    /// Run `body` alone: tasks called concurrently queue up (FIFO), so a stage never sees
    /// another task's loading or unloading, and `reduceMemory` holds across them.
    private func exclusive<T>(_ body: () async throws -> T) async throws -> T {
        if busy { await withCheckedContinuation { waiting.append($0) } }  // handed over with busy = true
        busy = true
        defer {
            if waiting.isEmpty { busy = false } else { waiting.removeFirst().resume() }
        }
        try Task.checkCancellation(orThrow: MobileOError.cancelled)
        return try await body()
    }

    // MARK: - resources

    /// The components loaded now.
    public var loadedComponents: Set<MobileOComponent> {
        var out = Set<MobileOComponent>()
        if llm != nil { out.insert(.llm) }
        if vision != nil { out.insert(.vision) }
        if mcp != nil { out.insert(.mcp) }
        if dit != nil { out.insert(.dit) }
        if vae != nil { out.insert(.vae) }
        return out
    }

    /// Load every model `tasks` need (all of them, whatever `reduceMemory` says).
    public func loadResources(for tasks: Set<MobileOTask> = Set(MobileOTask.allCases)) async throws {
        try await exclusive {
            for c in MobileOComponent.allCases where tasks.contains(where: { $0.components.contains(c) }) {
                try await load(c)
            }
        }
    }

    /// Load each model `tasks` need once, so that Core ML compiles and specialises it ahead of
    /// use; with `reduceMemory` each is unloaded again right after.
    public func prewarm(_ tasks: Set<MobileOTask> = Set(MobileOTask.allCases)) async throws {
        try await exclusive {
            for c in MobileOComponent.allCases where tasks.contains(where: { $0.components.contains(c) }) {
                try Task.checkCancellation(orThrow: MobileOError.cancelled)
                try await load(c)
                if reduceMemory { unload(c) }
            }
        }
    }

    /// Drop the models (all by default); the next task loads what it needs again.
    public func unloadResources(_ components: Set<MobileOComponent> = Set(MobileOComponent.allCases)) {
        for c in components { unload(c) }
    }

    private func unload(_ c: MobileOComponent) {
        switch c {
        case .llm: llm = nil
        case .vision: vision = nil
        case .mcp: mcp = nil
        case .dit: dit = nil
        case .vae: vae = nil
        }
    }

    /// The three big models: with `reduceMemory` only one of them is loaded at a time.
    private static let heavy: Set<MobileOComponent> = [.llm, .dit, .vae]

    private func load(_ c: MobileOComponent) async throws {
        if loadedComponents.contains(c) { return }
        if reduceMemory && Self.heavy.contains(c) { unloadResources(Self.heavy.subtracting([c])) }
        switch c {
        case .llm: llm = try await loaders.llm()
        case .vision:
            guard let load = loaders.vision else {
                throw MobileOError(.pipeline, "this engine has no vision loader; understanding and editing need one.",
                                   fix: "export the vision_encoder component.")
            }
            vision = try await load()
        case .mcp: mcp = try await loaders.mcp()
        case .dit: dit = try await loaders.dit()
        case .vae: vae = try await loaders.vae()
        }
    }

    /// After a stage: with `reduceMemory`, drop its model.
    private func done(_ c: MobileOComponent) {
        if reduceMemory { unload(c) }
    }

    // Each stage loads its runner, runs, and (with reduceMemory) drops it; the runner is a
    // local of its own function so nothing else keeps it alive.

    private func runVision(_ pixels: Tensor) async throws -> Tensor {
        try await load(.vision)
        defer { done(.vision) }
        return try core.imageEmbeddings(vision, pixels)
    }

    private func runHidden(_ prompt: [PromptSegment]) async throws -> [Tensor] {
        try await load(.llm)
        defer { done(.llm) }
        guard let llm else { throw MobileOError(.runner, "the LLM is not loaded.") }
        return try core.hiddenStates(llm, prompt)
    }

    private func runConditioning(_ hidden: [Tensor], guided: Bool) async throws -> Tensor {
        try await load(.mcp)
        defer { done(.mcp) }
        guard let mcp else { throw MobileOError(.runner, "the MCP is not loaded.") }
        return try core.conditioning(mcp, hidden, guided: guided)
    }

    private func runDenoise(_ context: Tensor, _ plan: PipelineCore.ImagePlan,
                            _ progress: PipelineCore.ProgressHandler?) async throws -> Tensor {
        try await load(.dit)
        defer { done(.dit) }
        guard let dit else { throw MobileOError(.runner, "the DiT is not loaded.") }
        return try core.denoise(dit, context: context, plan: plan, progress: progress)
    }

    private func runDecode(_ latents: Tensor) async throws -> (Tensor, RGBImage) {
        try await load(.vae)
        defer { done(.vae) }
        guard let vae else { throw MobileOError(.runner, "the VAE is not loaded.") }
        return try core.decode(vae, latents)
    }

    private func runAnswer(_ prompt: [PromptSegment], _ plan: PipelineCore.AnswerPlan,
                           _ progress: PipelineCore.ProgressHandler?) async throws -> Answer {
        try await load(.llm)
        defer { done(.llm) }
        guard let llm else { throw MobileOError(.runner, "the LLM is not loaded.") }
        return try core.answer(llm, prompt, plan, progress: progress)
    }

    // MARK: - tasks

    /// Text -> image.  `progress` is called on the engine after each stage and step.
    public func generate(prompt: String, options: ImageOptions = .init(),
                         progress: (@Sendable (Progress) -> Void)? = nil) async throws -> GeneratedImage {
        try await exclusive {
            let ids = try core.encode(prompt, core.templates.generation, image: false)
            return try await image(ids: ids, pixels: nil, options: options, progress: progress)
        }
    }

    /// Image + instruction -> image.  `pixels`: the vision encoder's input [3, S, S] (`ImagePreprocess`).
    public func edit(pixels: Tensor, instruction: String, options: ImageOptions = .init(),
                     progress: (@Sendable (Progress) -> Void)? = nil) async throws -> GeneratedImage {
        try await exclusive {
            try core.checkPixels(pixels)
            let ids = try core.encode(instruction, core.templates.editing, image: true)
            return try await image(ids: ids, pixels: pixels, options: options, progress: progress)
        }
    }

    /// Image + question -> answer; `progress` gets `.token` as each one is chosen.
    public func understand(pixels: Tensor, question: String, options: TextOptions = .init(),
                           progress: (@Sendable (Progress) -> Void)? = nil) async throws -> Answer {
        try await exclusive {
            try core.checkPixels(pixels)
            let ids = try core.encode(question, core.templates.understanding, image: true)
            let plan = try core.answerPlan(options)
            let handler = Self.handler(progress)
            let prompt = try core.segments(ids, image: try await runVision(pixels))
            try PipelineCore.check(handler, .encoded(promptTokens: PipelineCore.length(prompt)))
            return try await runAnswer(prompt, plan, handler)
        }
    }

    /// Text-only chat: `message` after the earlier `history` turns -> the assistant's answer
    /// (loads the LLM only).  The whole conversation counts against the prompt limit.
    public func chat(_ message: String, history: [ChatTurn] = [], options: TextOptions = .init(),
                     progress: (@Sendable (Progress) -> Void)? = nil) async throws -> Answer {
        try await exclusive {
            let text = try core.templates.conversation(message, history: history)
            let ids = try core.encode(message, { _ in text }, image: false)
            let plan = try core.answerPlan(options)
            let handler = Self.handler(progress)
            let prompt = try core.segments(ids, image: nil)
            try PipelineCore.check(handler, .encoded(promptTokens: PipelineCore.length(prompt)))
            return try await runAnswer(prompt, plan, handler)
        }
    }

    /// `chat` as a stream of `.progress(.token(id:text:))`, then `.finished(answer)`.
    public nonisolated func chatEvents(_ message: String, history: [ChatTurn] = [], options: TextOptions = .init())
        -> AsyncThrowingStream<MobileOEvent<Answer>, Error> {
        stream { engine, progress in try await engine.chat(message, history: history, options: options, progress: progress) }
    }

    private func image(ids: [Int], pixels: Tensor?, options: ImageOptions,
                       progress: (@Sendable (Progress) -> Void)?) async throws -> GeneratedImage {
        let plan = try core.imagePlan(options)
        let handler = Self.handler(progress)
        var embeddings: Tensor?
        if let pixels { embeddings = try await runVision(pixels) }
        let prompt = try core.segments(ids, image: embeddings)
        try PipelineCore.check(handler, .encoded(promptTokens: PipelineCore.length(prompt)))
        let hidden = try await runHidden(prompt)
        try Task.checkCancellation(orThrow: MobileOError.cancelled)
        let context = try await runConditioning(hidden, guided: plan.guided)
        let latents = try await runDenoise(context, plan, handler)
        let (unit, rgb) = try await runDecode(latents)
        try PipelineCore.check(handler, .decoded)
        return GeneratedImage(image: rgb, unit: unit, latents: latents, promptIds: core.flat(prompt))
    }

    private static func handler(_ progress: (@Sendable (Progress) -> Void)?) -> PipelineCore.ProgressHandler {
        { event in progress?(event); return true }
    }

    // MARK: - streams

    /// `generate` as a stream: `.progress` events, then `.finished(image)`.  Ending the
    /// iteration (or cancelling its Task) cancels the generation.
    public nonisolated func generationEvents(prompt: String, options: ImageOptions = .init())
        -> AsyncThrowingStream<MobileOEvent<GeneratedImage>, Error> {
        stream { engine, progress in try await engine.generate(prompt: prompt, options: options, progress: progress) }
    }

    public nonisolated func editEvents(pixels: Tensor, instruction: String, options: ImageOptions = .init())
        -> AsyncThrowingStream<MobileOEvent<GeneratedImage>, Error> {
        stream { engine, progress in
            try await engine.edit(pixels: pixels, instruction: instruction, options: options, progress: progress)
        }
    }

    /// `understand` as a stream: `.progress(.token(id:text:))` as the answer grows, then `.finished(answer)`.
    public nonisolated func understandingEvents(pixels: Tensor, question: String, options: TextOptions = .init())
        -> AsyncThrowingStream<MobileOEvent<Answer>, Error> {
        stream { engine, progress in
            try await engine.understand(pixels: pixels, question: question, options: options, progress: progress)
        }
    }

    private nonisolated func stream<Output: Sendable>(
        _ run: @escaping @Sendable (MobileOEngine, @escaping @Sendable (Progress) -> Void) async throws -> Output
    ) -> AsyncThrowingStream<MobileOEvent<Output>, Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    let out = try await run(self) { continuation.yield(.progress($0)) }
                    continuation.yield(.finished(out))
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }
}
