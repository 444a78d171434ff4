import Foundation

/// Mobile-O's three tasks over a manifest, a tokenizer and model runners:
///   generate(prompt)               text -> image
///   understand(image, question)    image + text -> text
///   edit(image, instruction)       image + text -> image
/// The orchestration follows the Python pipeline (mlx_model): prompt template -> token ids
/// -> LLM hidden states -> MCP (unconditional = MCP of zero hidden states) -> sampler over
/// the DiT with classifier-free guidance (u + g (c - u)) -> VAE decoder (latents / scaling
/// factor, then clamp(x / 2 + 0.5)) -> round(255 x) as uint8.
public final class MobileOPipeline {
    public let manifest: Manifest
    public let tokenizer: TextTokenizer
    public let runners: ModelRunners
    public let templates: PromptTemplates

    public init(manifest: Manifest, tokenizer: TextTokenizer, runners: ModelRunners) throws {
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.runners = runners
        self.templates = PromptTemplates(manifest.pipeline.prompts)
        for t in manifest.pipeline.tokenizer.specialTokens where tokenizer.tokenId(t.name) != t.id {
            throw MobileOError(.tokenizer, "the tokenizer gives \(t.name) id \(tokenizer.tokenId(t.name).map(String.init) ?? "none") but the manifest says \(t.id).",
                               fix: "use the tokenizer files listed in manifest.json (pipeline.tokenizer.files).")
        }
    }

    // MARK: - options, progress, results

    public struct ImageOptions: Sendable {
        public var steps: Int?           // nil: manifest default
        public var guidance: Double?     // nil: manifest default
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

    public enum Progress {
        case encoded(promptTokens: Int)
        case step(index: Int, of: Int, latents: Tensor)
        case decoded
        case token(id: Int, text: String)  // text: the new characters (empty while a character is incomplete)
    }

    /// Called at each stage; return false to cancel (the task throws `MobileOError.cancelled`).
    /// Swift task cancellation (`Task.isCancelled`) is honoured as well.
    public typealias ProgressHandler = (Progress) -> Bool

    public struct GeneratedImage {
        public var image: RGBImage
        public var unit: Tensor       // [3, H, W] in [0, 1] before rounding
        public var latents: Tensor    // final latents [C, H, W]
        public var promptIds: [Int]   // the image token at every image position (mlx_model's prompt_ids)
    }

    public struct Answer {
        public var text: String
        public var ids: [Int]
        public var promptIds: [Int]   // as GeneratedImage.promptIds
    }

    // MARK: - tasks

    public func generate(prompt: String, options: ImageOptions = .init(),
                         progress: ProgressHandler? = nil) throws -> GeneratedImage {
        let ids = try encode(prompt, templates.generation)
        return try image(ids: ids, image: nil, options: options, progress: progress)
    }

    /// `pixels`: the vision encoder's input [3, S, S] (see `ImagePreprocess`).
    public func edit(pixels: Tensor, instruction: String, options: ImageOptions = .init(),
                     progress: ProgressHandler? = nil) throws -> GeneratedImage {
        let ids = try encode(instruction, templates.editing)
        return try image(ids: ids, image: try imageEmbeddings(pixels), options: options, progress: progress)
    }

    public func understand(pixels: Tensor, question: String, options: TextOptions = .init(),
                           progress: ProgressHandler? = nil) throws -> Answer {
        let d = manifest.pipeline.defaults
        let ids = try encode(question, templates.understanding)
        let prompt = try segments(ids, image: try imageEmbeddings(pixels))
        try check(progress, .encoded(promptTokens: prompt.reduce(0) { $0 + $1.length }))
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
        var sampler = TokenSampler(temperature: temperature, topP: topP, topK: topK, seed: options.seed)
        var logits = try runners.llm.prefill(prompt)
        var out = [Int](), shown = ""
        for n in 0..<maxTokens {
            let next = sampler.sample(logits)
            if next == eos { break }
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
            try check(progress, .token(id: next, text: piece))
            if n + 1 < maxTokens { logits = try runners.llm.decode(next) }
        }
        // Mobile-O's answer: special tokens skipped, surrounding whitespace stripped
        let answer = tokenizer.decode(out, skipSpecialTokens: true).trimmingCharacters(in: .whitespacesAndNewlines)
        return Answer(text: answer, ids: out, promptIds: try flat(prompt))
    }

    // MARK: - shared steps

    /// `template(text)` as token ids, with the Python pipeline's checks (empty, too long).
    private func encode(_ text: String, _ template: (String) -> String) throws -> [Int] {
        guard !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            throw MobileOError(.pipeline, "the prompt is empty.", fix: "pass a non-empty prompt, e.g. \"a red cup\".")
        }
        let ids = try tokenizer.encode(template(text))
        let limit = manifest.pipeline.prompts.maxPromptTokens
        guard ids.count <= limit else {
            throw MobileOError(.pipeline, "the prompt is \(ids.count) tokens with its template; the limit is \(limit).",
                               fix: "shorten the prompt.")
        }
        return ids
    }

    private func imageEmbeddings(_ pixels: Tensor) throws -> Tensor {
        guard let vision = runners.vision else {
            throw MobileOError(.pipeline, "this pipeline has no vision runner; understanding and editing need one.",
                               fix: "export the vision_encoder component and pass its runner.")
        }
        let s = manifest.pipeline.imagePreprocess.size
        guard pixels.shape == [3, s, s] else {
            throw MobileOError(.pipeline, "pixels have shape \(pixels.shape); the vision encoder takes [3, \(s), \(s)].",
                               fix: "prepare the image with ImagePreprocess.")
        }
        return try vision.imageEmbeddings(pixels)
    }

    private func segments(_ ids: [Int], image: Tensor?) throws -> [PromptSegment] {
        guard let imageId = manifest.pipeline.tokenizer.id(ofRole: "image") else {
            throw MobileOError(.manifest, "pipeline.tokenizer has no image role.")
        }
        return try PromptSegment.build(ids: ids, imageTokenId: imageId, image: image)
    }

    private func flat(_ prompt: [PromptSegment]) throws -> [Int] {
        PromptSegment.flatIds(prompt, imageTokenId: manifest.pipeline.tokenizer.id(ofRole: "image") ?? -1)
    }

    private func image(ids: [Int], image: Tensor?, options: ImageOptions,
                       progress: ProgressHandler?) throws -> GeneratedImage {
        let p = manifest.pipeline
        let prompt = try segments(ids, image: image)
        try check(progress, .encoded(promptTokens: prompt.reduce(0) { $0 + $1.length }))

        // conditioning: MCP of the last K hidden states; unconditional: MCP of zeros
        let hidden = try runners.llm.hiddenStates(prompt, count: p.conditioning.hiddenStates)
        guard hidden.count == p.conditioning.hiddenStates else {
            throw MobileOError(.runner, "the LLM runner returned \(hidden.count) hidden states; the MCP fuses \(p.conditioning.hiddenStates).")
        }
        let cond = try runners.mcp.conditioning(hidden)
        let uncond = try runners.mcp.conditioning(hidden.map { Tensor(zeros: $0.shape) })
        let both = Tensor.stack([uncond, cond])

        // sampling
        var sampler = try p.makeSampler(steps: options.steps ?? p.defaults.steps)
        if let name = options.sampler, name != p.scheduler.type {
            var alt = p
            alt.scheduler.type = name
            sampler = try alt.makeSampler(steps: options.steps ?? p.defaults.steps)
        }
        let guidance = Float(options.guidance ?? p.defaults.guidance)
        var noise = GaussianNoise(seed: options.seed)
        var latents = options.initialLatents ?? noise.tensor(p.latentShape)
        guard latents.shape == p.latentShape else {
            throw MobileOError(.pipeline, "initial latents have shape \(latents.shape); the model takes \(p.latentShape).")
        }
        for (i, t) in sampler.timesteps.enumerated() {
            let v = try runners.dit.velocity(latents: Tensor.stack([latents, latents]), timestep: t, conditioning: both)
            guard v.shape == [2] + p.latentShape else {
                throw MobileOError(.runner, "the DiT runner returned shape \(v.shape); expected \([2] + p.latentShape).")
            }
            let halves = v.unstacked()
            let guided = classifierFreeGuidance(uncond: halves[0].data, cond: halves[1].data, scale: guidance)
            latents = Tensor(shape: latents.shape,
                             data: try sampler.step(modelOutput: guided, sample: latents.data, index: i))
            try check(progress, .step(index: i, of: sampler.steps, latents: latents))
        }

        // decoding
        let unit = try runners.vae.decode(latents)
        let rgb = try ImagePostprocess.rgb8(unit)
        try check(progress, .decoded)
        return GeneratedImage(image: rgb, unit: unit, latents: latents, promptIds: try flat(prompt))
    }

    private func check(_ progress: ProgressHandler?, _ event: Progress) throws {
        if Task.isCancelled { throw MobileOError.cancelled }
        if let progress, !progress(event) { throw MobileOError.cancelled }
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
