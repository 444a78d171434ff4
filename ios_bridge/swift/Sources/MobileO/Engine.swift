import Foundation

// The Swift-concurrency API: an actor that loads each model when a task needs it, runs the
// tasks as `async throws` functions (or streams their progress), and stops at the next step
// when the calling Task is cancelled.

/// The models a task runs: the vision encoder (understanding, editing), the language model,
/// the Mobile Conditioning Projector, the diffusion transformer and the VAE decoder (one list,
/// in weights/core/components.py's order; tests/test_ios_bridge.py reads the line below).
public enum MobileOComponent: String, Sendable, CaseIterable, Hashable {
    case vision, llm, mcp, dit, vae
}

/// What the app asks for; each needs its own components.
public enum MobileOTask: String, Sendable, CaseIterable, Hashable {
    /// Text -> image.
    case generation
    /// Image + instruction -> image.
    case editing
    /// Image + question -> answer.
    case understanding
    /// Text conversation.
    case chat

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
    /// Loads the language model.
    public var llm: @Sendable () async throws -> LanguageModelRunner
    /// Loads the vision encoder; nil when the export has none.
    public var vision: (@Sendable () async throws -> VisionRunner)?
    /// Loads the MCP.
    public var mcp: @Sendable () async throws -> ConditioningRunner
    /// Loads the DiT.
    public var dit: @Sendable () async throws -> DenoiserRunner
    /// Loads the VAE decoder.
    public var vae: @Sendable () async throws -> DecoderRunner

    /// One loader per component.
    public init(llm: @escaping @Sendable () async throws -> LanguageModelRunner,
                vision: (@Sendable () async throws -> VisionRunner)?,
                mcp: @escaping @Sendable () async throws -> ConditioningRunner,
                dit: @escaping @Sendable () async throws -> DenoiserRunner,
                vae: @escaping @Sendable () async throws -> DecoderRunner) {
        self.llm = llm; self.vision = vision; self.mcp = mcp; self.dit = dit; self.vae = vae
    }
}

/// Where a loader reports what it does (the engine sets it around each loader call; the Core
/// ML runner reports a compile through it).
struct LoadEvents: Sendable {
    @TaskLocal static var current: LoadEvents?
    let component: MobileOComponent
    let progress: (@Sendable (MobileOProgress) -> Void)?
    /// The component's bundle is being compiled.
    static func compiling() { if let c = current { c.progress?(.compiling(c.component)) } }
}

/// One event of a streamed task: progress, then the result last.
public enum MobileOEvent<Output: Sendable>: Sendable {
    /// A progress event.
    case progress(MobileOProgress)
    /// The task's result (the last event).
    case finished(Output)
}

/// When the engine frees its models.
public enum MemoryPolicy: String, Sendable, CaseIterable, Hashable {
    /// Models stay loaded until `unloadResources` (fastest; the default on Macs and 8 GB devices).
    case keepLoaded
    /// Each model is freed right after its stage, so at most one of the LLM, DiT and VAE is
    /// loaded at any time (slower: each task reloads them; use it on 4 GB devices).
    case reduceMemory
}

/// Mobile-O for apps: `generate`, `edit`, `understand` and `chat` as `async throws` functions
/// on an actor (so a `@MainActor` view model can await them, or iterate the `...Events`
/// streams), with models loaded when a task first needs them.
///
/// - Tasks called concurrently run one after another, in call order; `loadResources` and
///   `prewarm` take their turn in the same queue.
/// - Cancellation: cancel the awaiting Task (or stop iterating a stream).  A running task
///   throws `MobileOError.cancelled` during the current model call where the runner honours
///   cancellation (Core ML's async prediction, `Task.sleep`), else after it; a task still
///   waiting for its turn throws at once.
/// - Memory: `memoryPolicy` (changeable at any time with `setMemoryPolicy(_:)`).  On a memory
///   warning call `unloadResources()`: it frees at once every model the running stage does not
///   use, and the running stage's model when that stage ends; the running task then loads each
///   model it still needs for its stage only.  The engine's caches are bounded and freed with
///   the model they belong to.
/// - Progress from a `@MainActor` view model: iterate `generationEvents` (and the others) in a
///   `Task` started on the main actor; or pass a closure that hops:
///   `progress: { event in Task { @MainActor in model.apply(event) } }` (the closure is
///   `@Sendable` and runs on the engine; a `@MainActor` class is `Sendable`, so it may be captured).
public actor MobileOEngine {
    /// The export's manifest.
    public nonisolated let manifest: Manifest
    /// The tokenizer checked against the manifest.
    public nonisolated let tokenizer: any TextTokenizer
    /// When models are freed; change it with `setMemoryPolicy(_:)`.
    public private(set) var memoryPolicy: MemoryPolicy
    let core: PipelineCore
    private let loaders: RunnerLoaders
    let queue = TaskQueue()
    private var llm: (any LanguageModelRunner)?
    private var vision: (any VisionRunner)?
    private var mcp: (any ConditioningRunner)?
    private var dit: (any DenoiserRunner)?
    private var vae: (any DecoderRunner)?
    /// The components a running stage holds.
    private var inUse = Set<MobileOComponent>()
    /// Components asked to be freed while the running task holds or may need them: freed at the
    /// end of each stage that uses them, until the task ends.
    private var freeAfterStage = Set<MobileOComponent>()
    private var taskRunning = false

    /// Alias of the top-level `ImageOptions`.
    public typealias ImageOptions = MobileO.ImageOptions
    /// Alias of the top-level `TextOptions`.
    public typealias TextOptions = MobileO.TextOptions
    /// Alias of the top-level `MobileOProgress` (not Foundation's `Progress`).
    public typealias Progress = MobileO.MobileOProgress
    /// Alias of the top-level `GeneratedImage`.
    public typealias GeneratedImage = MobileO.GeneratedImage
    /// Alias of the top-level `Answer`.
    public typealias Answer = MobileO.Answer
    /// A progress callback; it runs on the engine (see the type's notes for `@MainActor` use).
    public typealias ProgressCallback = @Sendable (Progress) -> Void

    /// Checks the tokenizer against the manifest; loads nothing.
    public init(manifest: Manifest, tokenizer: any TextTokenizer, loaders: RunnerLoaders,
                memoryPolicy: MemoryPolicy = .keepLoaded) throws {
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.memoryPolicy = memoryPolicy
        self.loaders = loaders
        self.core = try PipelineCore(manifest: manifest, tokenizer: tokenizer)
    }

    /// The number of tokens `text` encodes to (no template): to show a count or trim a prompt.
    public nonisolated func tokenCount(_ text: String) throws -> Int { try tokenizer.encode(text).count }

    // MARK: - one task at a time

    /// Run `body` alone: tasks called concurrently queue up (FIFO); a cancelled waiter leaves
    /// the queue at once.  What `unloadResources` deferred to the stage ends is settled here.
    private func exclusive<T>(_ body: () async throws -> T) async throws -> T {
        try await queue.acquire()
        taskRunning = true
        defer {
            for c in freeAfterStage where !inUse.contains(c) { unload(c) }
            freeAfterStage = []
            taskRunning = false
            queue.release()
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

    /// Change when models are freed.  Switching to `.reduceMemory` frees at once every model no
    /// running stage uses; the running task follows the new policy from its next stage.
    public func setMemoryPolicy(_ policy: MemoryPolicy) {
        memoryPolicy = policy
        if policy == .reduceMemory {
            for c in loadedComponents where !inUse.contains(c) { unload(c) }
        }
    }

    /// Load every model `tasks` need, all of them whatever the memory policy (under
    /// `.reduceMemory` the next task's stages free them again).  Takes its turn with the tasks.
    public func loadResources(for tasks: Set<MobileOTask> = Set(MobileOTask.allCases),
                              progress: ProgressCallback? = nil) async throws {
        try await exclusive {
            for c in Self.components(tasks) {
                try Task.checkCancellation(orThrow: MobileOError.cancelled)
                try await load(c, progress: progress, exclusive: false)
            }
        }
    }

    /// Load each model `tasks` need once, so that Core ML compiles and specialises it ahead of
    /// use; under `.reduceMemory` each is freed again right after.  Takes its turn with the tasks.
    public func prewarm(_ tasks: Set<MobileOTask> = Set(MobileOTask.allCases),
                        progress: ProgressCallback? = nil) async throws {
        try await exclusive {
            for c in Self.components(tasks) {
                try Task.checkCancellation(orThrow: MobileOError.cancelled)
                try await load(c, progress: progress, exclusive: true)
                if memoryPolicy == .reduceMemory { unload(c) }
            }
        }
    }

    private static func components(_ tasks: Set<MobileOTask>) -> [MobileOComponent] {
        MobileOComponent.allCases.filter { c in tasks.contains { $0.components.contains(c) } }
    }

    /// Free models (all by default), e.g. on a memory warning.  Models no running stage uses
    /// are freed before this returns; a model the running stage uses is freed when that stage
    /// ends, and until the running task ends every stage frees its model after itself.
    public func unloadResources(_ components: Set<MobileOComponent> = Set(MobileOComponent.allCases)) {
        for c in components where !inUse.contains(c) { unload(c) }
        if taskRunning { freeAfterStage.formUnion(components) }
    }

    private func unload(_ c: MobileOComponent) {
        switch c {
        case .llm: llm = nil
        case .vision: vision = nil
        case .mcp: mcp = nil; core.clearCaches()
        case .dit: dit = nil
        case .vae: vae = nil
        }
    }

    /// The three big models: under `.reduceMemory` only one of them is loaded at a time.
    private static let heavy: Set<MobileOComponent> = [.llm, .dit, .vae]

    private func load(_ c: MobileOComponent, progress: ProgressCallback?, exclusive: Bool) async throws {
        if loadedComponents.contains(c) { return }
        if exclusive && memoryPolicy == .reduceMemory && Self.heavy.contains(c) {
            for other in Self.heavy.subtracting([c]) where !inUse.contains(other) { unload(other) }
        }
        progress?(.loading(c))
        try await LoadEvents.$current.withValue(LoadEvents(component: c, progress: progress)) { try await make(c) }
        progress?(.loaded(c))
        try Task.checkCancellation(orThrow: MobileOError.cancelled)
    }

    private func make(_ c: MobileOComponent) async throws {
        switch c {
        case .llm: let r = try await cancellable { try await loaders.llm() }; llm = r
        case .vision:
            guard let load = loaders.vision else {
                throw MobileOError(.pipeline, "this engine has no vision loader; understanding and editing need one.",
                                   fix: "export the vision_encoder component.")
            }
            let r = try await cancellable { try await load() }; vision = r
        case .mcp: let r = try await cancellable { try await loaders.mcp() }; mcp = r
        case .dit: let r = try await cancellable { try await loaders.dit() }; dit = r
        case .vae: let r = try await cancellable { try await loaders.vae() }; vae = r
        }
    }

    /// Load `c` for a stage and mark it in use.
    private func begin(_ c: MobileOComponent, _ progress: ProgressCallback?) async throws {
        try Task.checkCancellation(orThrow: MobileOError.cancelled)
        try await load(c, progress: progress, exclusive: true)
        inUse.insert(c)
    }

    /// After a stage: free its model under `.reduceMemory` or when asked to during the task.
    private func end(_ c: MobileOComponent) {
        inUse.remove(c)
        if memoryPolicy == .reduceMemory || freeAfterStage.contains(c) { unload(c) }
    }

    /// Free at once the models asked to be freed that the running stage does not use (called
    /// between denoising steps too, so a request is honoured within a step).
    private func settle() {
        for c in freeAfterStage where !inUse.contains(c) { unload(c) }
    }

    // Each stage loads its runner, runs, and frees it as the policy says; the runner is a
    // local of its own function so nothing else keeps it alive once the engine drops it.

    private func runVision(_ pixels: Tensor, _ progress: ProgressCallback?) async throws -> Tensor {
        try await begin(.vision, progress)
        defer { end(.vision) }
        return try await core.imageEmbeddings(vision, pixels)
    }

    private func runHidden(_ prompt: [PromptSegment], _ progress: ProgressCallback?) async throws -> [Tensor] {
        try await begin(.llm, progress)
        defer { end(.llm) }
        guard let llm else { throw MobileOError(.runner, "the LLM is not loaded.") }
        return try await core.hiddenStates(llm, prompt)
    }

    private func runConditioning(_ hidden: [Tensor], guided: Bool, _ progress: ProgressCallback?) async throws -> Tensor {
        try await begin(.mcp, progress)
        defer { end(.mcp) }
        guard let mcp else { throw MobileOError(.runner, "the MCP is not loaded.") }
        return try await core.conditioning(mcp, hidden, guided: guided)
    }

    private func runDenoise(_ context: Tensor, _ plan: PipelineCore.ImagePlan,
                            _ progress: ProgressCallback?) async throws -> Tensor {
        try await begin(.dit, progress)
        defer { end(.dit) }
        guard let dit else { throw MobileOError(.runner, "the DiT is not loaded.") }
        return try await core.denoise(dit, context: context, plan: plan, progress: Self.handler(progress),
                                      onStep: { [weak self] _ in await self?.settle() })
    }

    private func runDecode(_ latents: Tensor, _ progress: ProgressCallback?) async throws -> (Tensor, RGBImage) {
        try await begin(.vae, progress)
        defer { end(.vae) }
        guard let vae else { throw MobileOError(.runner, "the VAE is not loaded.") }
        return try await core.decode(vae, latents)
    }

    private func runAnswer(_ prompt: [PromptSegment], _ plan: PipelineCore.AnswerPlan,
                           _ progress: ProgressCallback?) async throws -> Answer {
        try await begin(.llm, progress)
        defer { end(.llm) }
        guard let llm else { throw MobileOError(.runner, "the LLM is not loaded.") }
        return try await core.answer(llm, prompt, plan, progress: Self.handler(progress))
    }

    // MARK: - tasks

    /// Text -> image.  `progress` is called on the engine after each stage and step.
    public func generate(prompt: String, options: ImageOptions = .init(),
                         progress: ProgressCallback? = nil) async throws -> GeneratedImage {
        try await exclusive {
            let ids = try core.encode(prompt, core.templates.generation, image: false)
            return try await image(ids: ids, pixels: nil, options: options, progress: progress)
        }
    }

    /// Image + instruction -> image.  `pixels`: the vision encoder's input [3, S, S] (`ImagePreprocess`).
    public func edit(pixels: Tensor, instruction: String, options: ImageOptions = .init(),
                     progress: ProgressCallback? = nil) async throws -> GeneratedImage {
        try await exclusive {
            try core.checkPixels(pixels)
            let ids = try core.encode(instruction, core.templates.editing, image: true)
            return try await image(ids: ids, pixels: pixels, options: options, progress: progress)
        }
    }

    /// Image + question -> answer; `progress` gets `.token` as each one is chosen.  The prompt
    /// and `maxNewTokens` are checked against the LLM's context before any model loads.
    public func understand(pixels: Tensor, question: String, options: TextOptions = .init(),
                           progress: ProgressCallback? = nil) async throws -> Answer {
        try await exclusive {
            try core.checkPixels(pixels)
            let ids = try core.encode(question, core.templates.understanding, image: true)
            let plan = try core.answerPlan(options, promptTokens: core.promptLength(ids, image: true))
            let prompt = try core.segments(ids, image: try await runVision(pixels, progress))
            try PipelineCore.check(Self.handler(progress), .encoded(promptTokens: PipelineCore.length(prompt)))
            return try await runAnswer(prompt, plan, progress)
        }
    }

    /// Text-only chat: `message` after the earlier `history` turns -> the assistant's answer
    /// (loads the LLM only).  The whole conversation counts against the prompt limit.
    public func chat(_ message: String, history: [ChatTurn] = [], options: TextOptions = .init(),
                     progress: ProgressCallback? = nil) async throws -> Answer {
        try await exclusive {
            let text = try core.templates.conversation(message, history: history)
            let ids = try core.encode(message, { _ in text }, image: false)
            let plan = try core.answerPlan(options, promptTokens: ids.count)
            let prompt = try core.segments(ids, image: nil)
            try PipelineCore.check(Self.handler(progress), .encoded(promptTokens: PipelineCore.length(prompt)))
            return try await runAnswer(prompt, plan, progress)
        }
    }

    private func image(ids: [Int], pixels: Tensor?, options: ImageOptions,
                       progress: ProgressCallback?) async throws -> GeneratedImage {
        let plan = try core.imagePlan(options)
        var embeddings: Tensor?
        if let pixels { embeddings = try await runVision(pixels, progress) }
        let prompt = try core.segments(ids, image: embeddings)
        try PipelineCore.check(Self.handler(progress), .encoded(promptTokens: PipelineCore.length(prompt)))
        let hidden = try await runHidden(prompt, progress)
        let context = try await runConditioning(hidden, guided: plan.guided, progress)
        let latents = try await runDenoise(context, plan, progress)
        let (unit, rgb) = try await runDecode(latents, progress)
        try PipelineCore.check(Self.handler(progress), .decoded)
        return core.result(plan, rgb: rgb, unit: unit, latents: latents, prompt: prompt)
    }

    private static func handler(_ progress: ProgressCallback?) -> PipelineCore.ProgressHandler {
        { event in progress?(event); return true }
    }

    // MARK: - streams

    /// `generate` as a stream: `.progress` events, then `.finished(image)`.  Ending the
    /// iteration (or cancelling its Task) cancels the generation.
    public nonisolated func generationEvents(prompt: String, options: ImageOptions = .init())
        -> AsyncThrowingStream<MobileOEvent<GeneratedImage>, Error> {
        stream { engine, progress in try await engine.generate(prompt: prompt, options: options, progress: progress) }
    }

    /// `edit` as a stream: `.progress` events, then `.finished(image)`.
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

    /// `chat` as a stream of `.progress(.token(id:text:))`, then `.finished(answer)`.
    public nonisolated func chatEvents(_ message: String, history: [ChatTurn] = [], options: TextOptions = .init())
        -> AsyncThrowingStream<MobileOEvent<Answer>, Error> {
        stream { engine, progress in try await engine.chat(message, history: history, options: options, progress: progress) }
    }

    private nonisolated func stream<Output: Sendable>(
        _ run: @escaping @Sendable (MobileOEngine, @escaping ProgressCallback) async throws -> Output
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
