import Foundation

/// Mobile-O's three tasks over a manifest, a tokenizer and model runners:
///   generate(prompt)               text -> image
///   understand(image, question)    image + text -> text
///   edit(image, instruction)       image + text -> image
/// The orchestration follows the Python pipeline (mlx_model): prompt template -> token ids
/// -> LLM hidden states -> MCP (unconditional = MCP of zero hidden states) -> sampler over
/// the DiT with classifier-free guidance (u + g (c - u)) -> VAE decoder (latents / scaling
/// factor, then clamp(x / 2 + 0.5)) -> round(255 x) as uint8.
///
/// The pipeline over runners that are all loaded up front.  Its tasks are `async` and run one
/// at a time, in call order (the runners hold the LLM's KV cache); a cancelled Task that is
/// still waiting for its turn throws at once.  For per-task loading, memory policies and
/// streams use the actor `MobileOEngine`.  Do not use `runners` directly while a task runs.
public final class MobileOPipeline: Sendable {
    /// The export's manifest.
    public let manifest: Manifest
    /// The tokenizer checked against the manifest's special tokens.
    public let tokenizer: any TextTokenizer
    /// The runners this pipeline drives.
    public let runners: ModelRunners
    /// The prompt templates of the manifest.
    public let templates: PromptTemplates
    let core: PipelineCore
    private let queue = TaskQueue()  // one task at a time

    /// Checks the tokenizer against the manifest; throws `MobileOError` on a mismatch.
    public init(manifest: Manifest, tokenizer: any TextTokenizer, runners: ModelRunners) throws {
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.runners = runners
        self.core = try PipelineCore(manifest: manifest, tokenizer: tokenizer)
        self.templates = core.templates
    }

    /// Called at each stage, on the thread running the task; return false to stop: image tasks
    /// throw `MobileOError.cancelled`, text tasks return the answer so far with
    /// `FinishReason.cancelled`.  Swift task cancellation (`Task.isCancelled`) throws
    /// `MobileOError.cancelled` as well.  (`MobileOEngine` streams `MobileOProgress` instead.)
    public typealias ProgressHandler = @Sendable (MobileOProgress) -> Bool

    // MARK: - tasks

    /// Text -> image.
    public func generate(prompt: String, options: ImageOptions = .init(),
                         progress: ProgressHandler? = nil) async throws -> GeneratedImage {
        try await queue.acquire()
        defer { queue.release() }
        let ids = try core.encode(prompt, templates.generation, image: false)
        return try await image(ids: ids, image: nil, options: options, progress: progress)
    }

    /// Image + instruction -> image.  `pixels`: the vision encoder's input [3, S, S] (see `ImagePreprocess`).
    public func edit(pixels: Tensor, instruction: String, options: ImageOptions = .init(),
                     progress: ProgressHandler? = nil) async throws -> GeneratedImage {
        try await queue.acquire()
        defer { queue.release() }
        try core.checkPixels(pixels)
        let ids = try core.encode(instruction, templates.editing, image: true)
        let plan = try core.imagePlan(options)
        return try await image(ids: ids, image: try await core.imageEmbeddings(runners.vision, pixels), plan: plan,
                               progress: progress)
    }

    /// Image + question -> answer.  Checks the prompt and `maxNewTokens` against the LLM's
    /// context before any model runs.
    public func understand(pixels: Tensor, question: String, options: TextOptions = .init(),
                           progress: ProgressHandler? = nil) async throws -> Answer {
        try await queue.acquire()
        defer { queue.release() }
        try core.checkPixels(pixels)
        let ids = try core.encode(question, templates.understanding, image: true)
        let plan = try core.answerPlan(options, promptTokens: core.promptLength(ids, image: true))
        let prompt = try core.segments(ids, image: try await core.imageEmbeddings(runners.vision, pixels))
        try PipelineCore.check(progress, .encoded(promptTokens: PipelineCore.length(prompt)))
        return try await core.answer(runners.llm, prompt, plan, progress: progress)
    }

    /// The number of tokens `text` encodes to (no template).
    public func tokenCount(_ text: String) throws -> Int { try tokenizer.encode(text).count }

    private func image(ids: [Int], image: Tensor?, options: ImageOptions,
                       progress: ProgressHandler?) async throws -> GeneratedImage {
        try await self.image(ids: ids, image: image, plan: try core.imagePlan(options), progress: progress)
    }

    private func image(ids: [Int], image: Tensor?, plan: PipelineCore.ImagePlan,
                       progress: ProgressHandler?) async throws -> GeneratedImage {
        let prompt = try core.segments(ids, image: image)
        try PipelineCore.check(progress, .encoded(promptTokens: PipelineCore.length(prompt)))
        let hidden = try await core.hiddenStates(runners.llm, prompt)
        let context = try await core.conditioning(runners.mcp, hidden, guided: plan.guided)
        let latents = try await core.denoise(runners.dit, context: context, plan: plan, progress: progress)
        let (unit, rgb) = try await core.decode(runners.vae, latents)
        try PipelineCore.check(progress, .decoded)
        return core.result(plan, rgb: rgb, unit: unit, latents: latents, prompt: prompt)
    }
}

/// The stages of the tasks, shared by `MobileOPipeline` (runners loaded up front) and
/// `MobileOEngine` (runners loaded per stage).  Each stage takes the runner it uses.  The one
/// mutable member, the unconditional-conditioning cache, is bounded and behind a lock.
final class PipelineCore: @unchecked Sendable {
    let manifest: Manifest
    let tokenizer: any TextTokenizer
    let templates: PromptTemplates
    /// MCP of zero hidden states by prompt length: the same for every prompt of that length.
    /// At most `unconditionalLimit` entries, least recently used dropped first.
    private var unconditional: [Int: Tensor] = [:]
    private var unconditionalOrder: [Int] = []
    static let unconditionalLimit = 4
    private let lock = NSLock()

    init(manifest: Manifest, tokenizer: any TextTokenizer) throws {
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.templates = PromptTemplates(manifest.pipeline.prompts)
        for t in manifest.pipeline.tokenizer.specialTokens where tokenizer.tokenId(t.name) != t.id {
            throw MobileOError(.tokenizer, "the tokenizer gives \(t.name) id \(tokenizer.tokenId(t.name).map(String.init) ?? "none") but the manifest says \(t.id).",
                               fix: "use the tokenizer files listed in manifest.json (pipeline.tokenizer.files).")
        }
    }

    typealias ProgressHandler = MobileOPipeline.ProgressHandler

    /// Throws when the Task is cancelled or `progress` returns false.
    static func check(_ progress: ProgressHandler?, _ event: MobileOProgress) throws {
        if Task.isCancelled { throw MobileOError.cancelled }
        if let progress, !progress(event) { throw MobileOError.cancelled }
    }

    static func length(_ prompt: [PromptSegment]) -> Int { prompt.reduce(0) { $0 + $1.length } }

    /// The number of cached unconditional conditionings (bounded by `unconditionalLimit`).
    var cachedUnconditionalCount: Int { lock.withLock { unconditional.count } }

    /// Drop the unconditional-conditioning cache (when the MCP is unloaded).
    func clearCaches() { lock.withLock { unconditional = [:]; unconditionalOrder = [] } }

    /// `template(text)` as token ids, with the Python pipeline's checks before anything runs:
    /// empty; with an image, exactly one placeholder; too long, counting the image's tokens
    /// (mlx_model.components.multimodal.MultimodalPrompt.build: template + text + image tokens <= limit).
    func encode(_ text: String, _ template: (String) -> String, image: Bool) throws -> [Int] {
        guard !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            throw MobileOError(.pipeline, "the prompt is empty.", fix: "pass a non-empty prompt, e.g. \"a red cup\".")
        }
        let ids = try tokenizer.encode(template(text))
        let limit = manifest.pipeline.prompts.maxPromptTokens
        if image {
            guard let imageId = manifest.pipeline.tokenizer.id(ofRole: "image") else {
                throw MobileOError(.manifest, "pipeline.tokenizer has no image role.")
            }
            let count = ids.filter { $0 == imageId }.count
            guard count == 1 else {
                throw MobileOError(.pipeline, "the prompt holds \(count) image placeholders; Mobile-O takes exactly one image.",
                                   fix: "remove the image placeholder from the question or instruction.")
            }
            let total = promptLength(ids, image: true)
            guard total <= limit else {
                throw MobileOError(.pipeline, "the prompt is \(total) tokens with its template and the \(manifest.pipeline.conditioning.imageTokens) image tokens; the limit is \(limit).",
                                   fix: "shorten the question or instruction.")
            }
        } else {
            guard ids.count <= limit else {
                throw MobileOError(.pipeline, "the prompt is \(ids.count) tokens with its template; the limit is \(limit).",
                                   fix: "shorten the prompt.")
            }
        }
        return ids
    }

    /// The prompt's length in LLM positions: the image placeholder counts its image tokens.
    func promptLength(_ ids: [Int], image: Bool) -> Int {
        image ? ids.count - 1 + manifest.pipeline.conditioning.imageTokens : ids.count
    }

    func checkPixels(_ pixels: Tensor) throws {
        let s = manifest.pipeline.imagePreprocess.size
        guard pixels.shape == [3, s, s] else {
            throw MobileOError(.pipeline, "pixels have shape \(pixels.shape); the vision encoder takes [3, \(s), \(s)].",
                               fix: "prepare the image with ImagePreprocess.")
        }
    }

    func imageEmbeddings(_ vision: (any VisionRunner)?, _ pixels: Tensor) async throws -> Tensor {
        guard let vision else {
            throw MobileOError(.pipeline, "this pipeline has no vision runner; understanding and editing need one.",
                               fix: "export the vision_encoder component and pass its runner.")
        }
        try checkPixels(pixels)
        return try await cancellable { try await vision.imageEmbeddings(pixels) }
    }

    func segments(_ ids: [Int], image: Tensor?) throws -> [PromptSegment] {
        guard let imageId = manifest.pipeline.tokenizer.id(ofRole: "image") else {
            throw MobileOError(.manifest, "pipeline.tokenizer has no image role.")
        }
        return try PromptSegment.build(ids: ids, imageTokenId: imageId, image: image)
    }

    func flat(_ prompt: [PromptSegment]) -> [Int] {
        PromptSegment.flatIds(prompt, imageTokenId: manifest.pipeline.tokenizer.id(ofRole: "image") ?? -1)
    }

    // MARK: image stages

    struct ImagePlan: @unchecked Sendable {  // the sampler is used by one task only
        var sampler: any Sampler
        var guidance: Float
        var guidanceValue: Double
        var latents: Tensor
        var seed: UInt64?
        var previewEvery: Int
        /// false at guidance 1: u + 1 (c - u) = c, so the unconditional branch is skipped
        var guided: Bool { guidance != 1 }
    }

    /// Sampler, guidance and initial latents, checked before any model runs.
    func imagePlan(_ options: ImageOptions) throws -> ImagePlan {
        var p = manifest.pipeline
        if let choice = options.sampler { p.scheduler.type = choice.rawValue }
        let sampler = try p.makeSampler(steps: options.steps ?? p.defaults.steps)
        var noise = GaussianNoise(seed: options.seed)
        let latents = options.initialLatents ?? noise.tensor(p.latentShape)
        guard latents.shape == p.latentShape else {
            throw MobileOError(.pipeline, "initial latents have shape \(latents.shape); the model takes \(p.latentShape).")
        }
        guard options.previewEvery >= 0 else {
            throw MobileOError(.pipeline, "previewEvery must be >= 0, got \(options.previewEvery).", fix: "use 0 for no previews.")
        }
        let g = options.guidance ?? p.defaults.guidance
        return ImagePlan(sampler: sampler, guidance: Float(g), guidanceValue: g, latents: latents,
                         seed: options.initialLatents == nil ? options.seed : nil, previewEvery: options.previewEvery)
    }

    func result(_ plan: ImagePlan, rgb: RGBImage, unit: Tensor, latents: Tensor, prompt: [PromptSegment]) -> GeneratedImage {
        GeneratedImage(image: rgb, unit: unit, latents: latents, promptIds: flat(prompt), seed: plan.seed,
                       steps: plan.sampler.steps, guidance: plan.guidanceValue)
    }

    func hiddenStates(_ llm: any LanguageModelRunner, _ prompt: [PromptSegment]) async throws -> [Tensor] {
        let k = manifest.pipeline.conditioning.hiddenStates
        let hidden = try await cancellable { try await llm.hiddenStates(prompt, count: k) }
        guard hidden.count == k else {
            throw MobileOError(.runner, "the LLM runner returned \(hidden.count) hidden states; the MCP fuses \(k).")
        }
        return hidden
    }

    /// The DiT's conditioning batch, built once per generation: [uncond, cond] when guided,
    /// else [cond].  Unconditional = MCP of zero hidden states, cached per prompt length.
    func conditioning(_ mcp: any ConditioningRunner, _ hidden: [Tensor], guided: Bool) async throws -> Tensor {
        let cond = try await cancellable { try await mcp.conditioning(hidden) }
        guard guided else { return Tensor.stack([cond]) }
        let l = hidden[0].shape[0]
        let cached: Tensor? = lock.withLock {
            guard let c = unconditional[l] else { return nil }
            unconditionalOrder.removeAll { $0 == l }
            unconditionalOrder.append(l)
            return c
        }
        let uncond: Tensor
        if let cached, cached.shape == cond.shape {
            uncond = cached
        } else {
            let zeros = hidden.map { Tensor(zeros: $0.shape) }
            uncond = try await cancellable { try await mcp.conditioning(zeros) }
            lock.withLock {
                unconditional[l] = uncond
                unconditionalOrder.removeAll { $0 == l }
                unconditionalOrder.append(l)
                while unconditionalOrder.count > Self.unconditionalLimit {
                    unconditional[unconditionalOrder.removeFirst()] = nil
                }
            }
        }
        return Tensor.stack([uncond, cond])
    }

    /// The sampler loop.  `onStep` runs after each step (the engine frees idle models there).
    func denoise(_ dit: any DenoiserRunner, context: Tensor, plan: ImagePlan, progress: ProgressHandler?,
                 onStep: (@Sendable (Int) async -> Void)? = nil) async throws -> Tensor {
        let shape = manifest.pipeline.latentShape
        let b = context.shape[0]
        var latents = plan.latents
        for (i, t) in plan.sampler.timesteps.enumerated() {
            try Task.checkCancellation(orThrow: MobileOError.cancelled)
            let input = Tensor.stack([Tensor](repeating: latents, count: b))
            let v = try await cancellable { try await dit.velocity(latents: input, timestep: t, conditioning: context) }
            guard v.shape == [b] + shape else {
                throw MobileOError(.runner, "the DiT runner returned shape \(v.shape); expected \([b] + shape).")
            }
            let guided: [Float]
            if b == 2 {
                let halves = v.unstacked()
                guided = classifierFreeGuidance(uncond: halves[0].data, cond: halves[1].data, scale: plan.guidance)
            } else {
                guided = v.data
            }
            latents = Tensor(uncheckedShape: latents.shape, data: try plan.sampler.step(modelOutput: guided, sample: latents.data, index: i))
            try Self.check(progress, .step(index: i, of: plan.sampler.steps, latents: latents))
            if plan.previewEvery > 0 && (i + 1) % plan.previewEvery == 0 {
                try Self.check(progress, .preview(index: i, image: LatentPreview.image(latents)))
            }
            await onStep?(i)
        }
        return latents
    }

    func decode(_ vae: any DecoderRunner, _ latents: Tensor) async throws -> (Tensor, RGBImage) {
        try Task.checkCancellation(orThrow: MobileOError.cancelled)
        let unit = try await cancellable { try await vae.decode(latents) }
        return (unit, try ImagePostprocess.rgb8(unit))
    }

    // MARK: text stages

    struct AnswerPlan: Sendable {
        var eos: Int, maxTokens: Int, temperature: Double, topP: Double, topK: Int, minP: Double, seed: UInt64
    }

    /// The decoding plan, with every check before any model runs: the options' ranges, and the
    /// prompt plus `maxNewTokens` against the LLM's context (as mlx_model's check_length).
    func answerPlan(_ options: TextOptions, promptTokens: Int) throws -> AnswerPlan {
        let d = manifest.pipeline.defaults
        guard let eos = manifest.pipeline.tokenizer.id(ofRole: "eos") else {
            throw MobileOError(.manifest, "pipeline.tokenizer has no eos role.")
        }
        let maxTokens = options.maxNewTokens ?? d.maxNewTokens
        let temperature = options.temperature ?? d.temperature, topP = options.topP ?? d.topP
        let topK = options.topK ?? d.topK ?? 0
        guard maxTokens >= 1 else { throw MobileOError(.pipeline, "maxNewTokens must be at least 1, got \(maxTokens).", fix: "pass 1 or more.") }
        guard temperature >= 0 else { throw MobileOError(.pipeline, "temperature must be >= 0, got \(temperature).", fix: "use 0 for greedy decoding.") }
        guard topP > 0 && topP <= 1 else { throw MobileOError(.pipeline, "topP must be in (0, 1], got \(topP).", fix: "use 1 to turn it off.") }
        guard topK >= 0 else { throw MobileOError(.pipeline, "topK must be >= 0, got \(topK).", fix: "use 0 to turn it off.") }
        guard options.minP >= 0 && options.minP < 1 else {
            throw MobileOError(.pipeline, "minP must be in [0, 1), got \(options.minP).", fix: "use 0 to turn it off.")
        }
        let context = manifest.pipeline.hostInputs.contextLength
        guard promptTokens + maxTokens <= context else {
            throw MobileOError(.pipeline, "maxNewTokens \(maxTokens) plus the prompt's \(promptTokens) tokens is more than the model's context of \(context) tokens.",
                               fix: "pass maxNewTokens \(max(1, context - promptTokens)) or less, or shorten the prompt.")
        }
        return AnswerPlan(eos: eos, maxTokens: maxTokens, temperature: temperature, topP: topP, topK: topK,
                          minP: options.minP, seed: options.seed)
    }

    func answer(_ llm: any LanguageModelRunner, _ prompt: [PromptSegment], _ plan: AnswerPlan,
                progress: ProgressHandler?) async throws -> Answer {
        var sampler = try TokenSampler(temperature: plan.temperature, topP: plan.topP, topK: plan.topK, minP: plan.minP,
                                       seed: plan.seed)
        var logits = try await cancellable { try await llm.prefill(prompt) }
        var out = [Int](), shown = "", reason = FinishReason.length
        for n in 0..<plan.maxTokens {
            let next = sampler.sample(logits)
            if next == plan.eos { reason = .stop; break }
            out.append(next)
            // stream whole characters only: hold back a piece that ends in half of one
            let text = tokenizer.decode(out, skipSpecialTokens: true)
            var piece = ""
            if !text.hasSuffix("\u{FFFD}") {
                var v = String.UnicodeScalarView()
                v.append(contentsOf: text.unicodeScalars.dropFirst(shown.unicodeScalars.count))
                piece = String(v)
                shown = text
            }
            if Task.isCancelled { throw MobileOError.cancelled }
            if let progress, !progress(.token(id: next, text: piece)) { reason = .cancelled; break }
            if n + 1 < plan.maxTokens { logits = try await cancellable { try await llm.decode(next) } }
        }
        // Mobile-O's answer: special tokens skipped, surrounding whitespace stripped
        let answer = tokenizer.decode(out, skipSpecialTokens: true).trimmingCharacters(in: .whitespacesAndNewlines)
        return Answer(text: answer, ids: out, promptIds: flat(prompt), finishReason: reason)
    }
}

extension Task where Success == Never, Failure == Never {
    /// `checkCancellation()` throwing the package's own error.
    static func checkCancellation(orThrow error: MobileOError) throws {
        if isCancelled { throw error }
    }
}
