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
/// This is the synchronous API over runners that are all loaded up front.  It is `Sendable`
/// because its tasks run one at a time (a lock; the runners hold the LLM's KV cache), so
/// `Task.detached { try pipeline.generate(...) }` works, but each call blocks its thread.
/// From Swift concurrency prefer the actor `MobileOEngine` (async tasks, streams, per-task
/// loading, `reduceMemory`).  Do not use `runners` directly while a task runs.
public final class MobileOPipeline: @unchecked Sendable {
    public let manifest: Manifest
    public let tokenizer: TextTokenizer
    public let runners: ModelRunners
    public let templates: PromptTemplates
    let core: PipelineCore
    private let lock = NSLock()  // one task at a time

    public init(manifest: Manifest, tokenizer: TextTokenizer, runners: ModelRunners) throws {
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.runners = runners
        self.core = try PipelineCore(manifest: manifest, tokenizer: tokenizer)
        self.templates = core.templates
    }

    // MARK: - options, progress, results

    public struct ImageOptions: Sendable {
        public var steps: Int?           // nil: manifest default
        public var guidance: Double?     // nil: manifest default; 1 runs the conditional branch only
        public var seed: UInt64 = 0      // initial noise (GaussianNoise), when initialLatents is nil
        public var initialLatents: Tensor?  // [C, H, W]: to reproduce a Python run exactly
        public var sampler: String?      // nil: manifest scheduler type; or FlowEuler.typeName
        public init(steps: Int? = nil, guidance: Double? = nil, seed: UInt64 = 0, initialLatents: Tensor? = nil,
                    sampler: String? = nil) {
            self.steps = steps; self.guidance = guidance; self.seed = seed
            self.initialLatents = initialLatents; self.sampler = sampler
        }
    }

    public struct TextOptions: Sendable {
        public var maxNewTokens: Int?    // nil: manifest default
        public var temperature: Double?  // nil: manifest default; 0 = greedy
        public var topP: Double?         // nil: manifest default
        public var topK: Int?            // nil: manifest default; 0 = off
        public var seed: UInt64 = 0
        public init(maxNewTokens: Int? = nil, temperature: Double? = nil, topP: Double? = nil, topK: Int? = nil,
                    seed: UInt64 = 0) {
            self.maxNewTokens = maxNewTokens; self.temperature = temperature; self.topP = topP; self.topK = topK
            self.seed = seed
        }
    }

    public enum Progress: Sendable {
        case encoded(promptTokens: Int)
        case step(index: Int, of: Int, latents: Tensor)
        case decoded
        case token(id: Int, text: String)  // text: the new characters (empty while a character is incomplete)
    }

    /// Called at each stage, synchronously on the calling thread; return false to cancel (the
    /// task throws `MobileOError.cancelled`).  Swift task cancellation (`Task.isCancelled`) is
    /// honoured as well.  (`MobileOEngine` streams `Progress` instead.)
    public typealias ProgressHandler = (Progress) -> Bool

    public struct GeneratedImage: Sendable {
        public var image: RGBImage
        public var unit: Tensor       // [3, H, W] in [0, 1] before rounding
        public var latents: Tensor    // final latents [C, H, W]
        public var promptIds: [Int]   // the image token at every image position (mlx_model's prompt_ids)
    }

    public struct Answer: Sendable {
        public var text: String
        public var ids: [Int]
        public var promptIds: [Int]   // as GeneratedImage.promptIds
    }

    // MARK: - tasks

    public func generate(prompt: String, options: ImageOptions = .init(),
                         progress: ProgressHandler? = nil) throws -> GeneratedImage {
        lock.lock(); defer { lock.unlock() }
        let ids = try core.encode(prompt, templates.generation, image: false)
        return try image(ids: ids, image: nil, options: options, progress: progress)
    }

    /// `pixels`: the vision encoder's input [3, S, S] (see `ImagePreprocess`).
    public func edit(pixels: Tensor, instruction: String, options: ImageOptions = .init(),
                     progress: ProgressHandler? = nil) throws -> GeneratedImage {
        lock.lock(); defer { lock.unlock() }
        try core.checkPixels(pixels)
        let ids = try core.encode(instruction, templates.editing, image: true)
        return try image(ids: ids, image: try core.imageEmbeddings(runners.vision, pixels), options: options, progress: progress)
    }

    public func understand(pixels: Tensor, question: String, options: TextOptions = .init(),
                           progress: ProgressHandler? = nil) throws -> Answer {
        lock.lock(); defer { lock.unlock() }
        try core.checkPixels(pixels)
        let ids = try core.encode(question, templates.understanding, image: true)
        let plan = try core.answerPlan(options)
        let prompt = try core.segments(ids, image: try core.imageEmbeddings(runners.vision, pixels))
        try PipelineCore.check(progress, .encoded(promptTokens: PipelineCore.length(prompt)))
        return try core.answer(runners.llm, prompt, plan, progress: progress)
    }

    private func image(ids: [Int], image: Tensor?, options: ImageOptions,
                       progress: ProgressHandler?) throws -> GeneratedImage {
        let plan = try core.imagePlan(options)
        let prompt = try core.segments(ids, image: image)
        try PipelineCore.check(progress, .encoded(promptTokens: PipelineCore.length(prompt)))
        let hidden = try core.hiddenStates(runners.llm, prompt)
        let context = try core.conditioning(runners.mcp, hidden, guided: plan.guided)
        let latents = try core.denoise(runners.dit, context: context, plan: plan, progress: progress)
        let (unit, rgb) = try core.decode(runners.vae, latents)
        try PipelineCore.check(progress, .decoded)
        return GeneratedImage(image: rgb, unit: unit, latents: latents, promptIds: core.flat(prompt))
    }
}

/// The stages of the tasks, shared by `MobileOPipeline` (runners loaded up front) and
/// `MobileOEngine` (runners loaded per stage).  Each stage takes the runner it uses.
final class PipelineCore {
    let manifest: Manifest
    let tokenizer: TextTokenizer
    let templates: PromptTemplates
    /// MCP of zero hidden states by prompt length: the same for every prompt of that length.
    private var unconditional: [Int: Tensor] = [:]

    init(manifest: Manifest, tokenizer: TextTokenizer) throws {
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.templates = PromptTemplates(manifest.pipeline.prompts)
        for t in manifest.pipeline.tokenizer.specialTokens where tokenizer.tokenId(t.name) != t.id {
            throw MobileOError(.tokenizer, "the tokenizer gives \(t.name) id \(tokenizer.tokenId(t.name).map(String.init) ?? "none") but the manifest says \(t.id).",
                               fix: "use the tokenizer files listed in manifest.json (pipeline.tokenizer.files).")
        }
    }

    typealias Progress = MobileOPipeline.Progress
    typealias ProgressHandler = MobileOPipeline.ProgressHandler

    static func check(_ progress: ProgressHandler?, _ event: Progress) throws {
        if Task.isCancelled { throw MobileOError.cancelled }
        if let progress, !progress(event) { throw MobileOError.cancelled }
    }

    static func length(_ prompt: [PromptSegment]) -> Int { prompt.reduce(0) { $0 + $1.length } }

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
            let n = manifest.pipeline.conditioning.imageTokens
            let total = ids.count - 1 + n
            guard total <= limit else {
                throw MobileOError(.pipeline, "the prompt is \(total) tokens with its template and the \(n) image tokens; the limit is \(limit).",
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

    func checkPixels(_ pixels: Tensor) throws {
        let s = manifest.pipeline.imagePreprocess.size
        guard pixels.shape == [3, s, s] else {
            throw MobileOError(.pipeline, "pixels have shape \(pixels.shape); the vision encoder takes [3, \(s), \(s)].",
                               fix: "prepare the image with ImagePreprocess.")
        }
    }

    func imageEmbeddings(_ vision: VisionRunner?, _ pixels: Tensor) throws -> Tensor {
        guard let vision else {
            throw MobileOError(.pipeline, "this pipeline has no vision runner; understanding and editing need one.",
                               fix: "export the vision_encoder component and pass its runner.")
        }
        try checkPixels(pixels)
        return try vision.imageEmbeddings(pixels)
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

    struct ImagePlan {
        var sampler: any Sampler
        var guidance: Float
        var latents: Tensor
        /// false at guidance 1: u + 1 (c - u) = c, so the unconditional branch is skipped
        var guided: Bool { guidance != 1 }
    }

    /// Sampler, guidance and initial latents, checked before any model runs.
    func imagePlan(_ options: MobileOPipeline.ImageOptions) throws -> ImagePlan {
        var p = manifest.pipeline
        if let name = options.sampler { p.scheduler.type = name }
        let sampler = try p.makeSampler(steps: options.steps ?? p.defaults.steps)
        var noise = GaussianNoise(seed: options.seed)
        let latents = options.initialLatents ?? noise.tensor(p.latentShape)
        guard latents.shape == p.latentShape else {
            throw MobileOError(.pipeline, "initial latents have shape \(latents.shape); the model takes \(p.latentShape).")
        }
        return ImagePlan(sampler: sampler, guidance: Float(options.guidance ?? p.defaults.guidance), latents: latents)
    }

    func hiddenStates(_ llm: LanguageModelRunner, _ prompt: [PromptSegment]) throws -> [Tensor] {
        let k = manifest.pipeline.conditioning.hiddenStates
        let hidden = try llm.hiddenStates(prompt, count: k)
        guard hidden.count == k else {
            throw MobileOError(.runner, "the LLM runner returned \(hidden.count) hidden states; the MCP fuses \(k).")
        }
        return hidden
    }

    /// The DiT's conditioning batch, built once per generation: [uncond, cond] when guided,
    /// else [cond].  Unconditional = MCP of zero hidden states, cached per prompt length.
    func conditioning(_ mcp: ConditioningRunner, _ hidden: [Tensor], guided: Bool) throws -> Tensor {
        let cond = try mcp.conditioning(hidden)
        guard guided else { return Tensor.stack([cond]) }
        let l = hidden[0].shape[0]
        let uncond: Tensor
        if let cached = unconditional[l], cached.shape == cond.shape {
            uncond = cached
        } else {
            uncond = try mcp.conditioning(hidden.map { Tensor(zeros: $0.shape) })
            unconditional[l] = uncond
        }
        return Tensor.stack([uncond, cond])
    }

    func denoise(_ dit: DenoiserRunner, context: Tensor, plan: ImagePlan, progress: ProgressHandler?) throws -> Tensor {
        let shape = manifest.pipeline.latentShape
        let b = context.shape[0]
        var latents = plan.latents
        for (i, t) in plan.sampler.timesteps.enumerated() {
            try Task.checkCancellation(orThrow: MobileOError.cancelled)
            let v = try dit.velocity(latents: Tensor.stack([Tensor](repeating: latents, count: b)), timestep: t,
                                     conditioning: context)
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
            latents = Tensor(shape: latents.shape, data: try plan.sampler.step(modelOutput: guided, sample: latents.data, index: i))
            try Self.check(progress, .step(index: i, of: plan.sampler.steps, latents: latents))
        }
        return latents
    }

    func decode(_ vae: DecoderRunner, _ latents: Tensor) throws -> (Tensor, RGBImage) {
        try Task.checkCancellation(orThrow: MobileOError.cancelled)
        let unit = try vae.decode(latents)
        return (unit, try ImagePostprocess.rgb8(unit))
    }

    // MARK: text stages

    struct AnswerPlan {
        var eos: Int, maxTokens: Int, temperature: Double, topP: Double, topK: Int, seed: UInt64
    }

    func answerPlan(_ options: MobileOPipeline.TextOptions) throws -> AnswerPlan {
        let d = manifest.pipeline.defaults
        guard let eos = manifest.pipeline.tokenizer.id(ofRole: "eos") else {
            throw MobileOError(.manifest, "pipeline.tokenizer has no eos role.")
        }
        let maxTokens = options.maxNewTokens ?? d.maxNewTokens
        let temperature = options.temperature ?? d.temperature, topP = options.topP ?? d.topP
        let topK = options.topK ?? d.topK ?? 0
        guard maxTokens >= 1 else { throw MobileOError(.pipeline, "maxNewTokens must be at least 1, got \(maxTokens).") }
        guard temperature >= 0 else { throw MobileOError(.pipeline, "temperature must be >= 0, got \(temperature).", fix: "use 0 for greedy decoding.") }
        guard topP > 0 && topP <= 1 else { throw MobileOError(.pipeline, "topP must be in (0, 1], got \(topP).", fix: "use 1 to turn it off.") }
        guard topK >= 0 else { throw MobileOError(.pipeline, "topK must be >= 0, got \(topK).", fix: "use 0 to turn it off.") }
        return AnswerPlan(eos: eos, maxTokens: maxTokens, temperature: temperature, topP: topP, topK: topK, seed: options.seed)
    }

    func answer(_ llm: LanguageModelRunner, _ prompt: [PromptSegment], _ plan: AnswerPlan,
                progress: ProgressHandler?) throws -> MobileOPipeline.Answer {
        var sampler = TokenSampler(temperature: plan.temperature, topP: plan.topP, topK: plan.topK, seed: plan.seed)
        var logits = try llm.prefill(prompt)
        var out = [Int](), shown = ""
        for n in 0..<plan.maxTokens {
            let next = sampler.sample(logits)
            if next == plan.eos { break }
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
            try Self.check(progress, .token(id: next, text: piece))
            if n + 1 < plan.maxTokens { logits = try llm.decode(next) }
        }
        // Mobile-O's answer: special tokens skipped, surrounding whitespace stripped
        let answer = tokenizer.decode(out, skipSpecialTokens: true).trimmingCharacters(in: .whitespacesAndNewlines)
        return MobileOPipeline.Answer(text: answer, ids: out, promptIds: flat(prompt))
    }
}

extension Task where Success == Never, Failure == Never {
    /// `checkCancellation()` throwing the package's own error.
    static func checkCancellation(orThrow error: MobileOError) throws {
        if isCancelled { throw error }
    }
}

/// Next-token choice: greedy at temperature 0, else softmax(logits / T) with optional
/// top-k (0 = off; Mobile-O's default 50 is transformers') and nucleus (top-p) filtering,
/// drawn from a seeded generator.
public struct TokenSampler {
    public var temperature: Double
    public var topP: Double
    public var topK: Int
    private var rng: GaussianNoise

    public init(temperature: Double, topP: Double = 1, topK: Int = 0, seed: UInt64 = 0) {
        self.temperature = temperature; self.topP = topP; self.topK = topK; rng = GaussianNoise(seed: seed)
    }

    public mutating func sample(_ logits: [Float]) -> Int {
        guard temperature > 0 else { return Self.argmax(logits) }
        let m = logits.max() ?? 0
        var probs = logits.map { Foundation.exp(Double($0 - m) / temperature) }
        let total = probs.reduce(0, +)
        probs = probs.map { $0 / total }
        var order = Array(probs.indices)
        if topK > 0 && topK < order.count {  // ties at the k-th value stay in
            let kth = order.map { probs[$0] }.sorted(by: >)[topK - 1]
            order = order.filter { probs[$0] >= kth }
        }
        if topP < 1 {
            order.sort { probs[$0] > probs[$1] }
            var cum = 0.0, keep = 0
            for (k, i) in order.enumerated() {
                cum += probs[i]; keep = k + 1
                if cum >= topP { break }
            }
            order = Array(order.prefix(keep))
        }
        let mass = order.reduce(0.0) { $0 + probs[$1] }
        var u = rng.uniform() * mass
        for i in order {
            u -= probs[i]
            if u <= 0 { return i }
        }
        return order.last ?? 0
    }

    /// First index of the largest logit (as numpy/MLX argmax).
    public static func argmax(_ logits: [Float]) -> Int {
        var best = 0
        for i in logits.indices where logits[i] > logits[best] { best = i }
        return best
    }
}
