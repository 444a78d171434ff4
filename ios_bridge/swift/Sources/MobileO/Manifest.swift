import Foundation

/// `manifest.json`, written by `python -m coreml_convert` (ios_bridge/manifest.py) and
/// described by ios_bridge/schema.json.  Decode with `Manifest.load(from:)`, which also
/// validates; every fact the pipeline uses (scheduler, defaults, latent shape, prompts,
/// token ids, tensor specs) comes from here, none is hard-coded.
public struct Manifest: Codable, Equatable, Sendable {
    /// The manifest schema version this package reads.
    public static let supportedSchemaVersion = 4
    /// The manifest's file name in an export folder.
    public static let fileName = "manifest.json"

    /// `schema_version`: must equal `supportedSchemaVersion`.
    public var schemaVersion: Int
    /// `model`: which checkpoint was exported.
    public var model: Model
    /// what the conversion run was asked for (target, partial); `mobileo-validate` refuses an
    /// export missing a component unless it is declared partial
    public var export: Export?
    /// `components`: the exported bundles.
    public var components: [Component]
    /// `pipeline`: everything the app needs to run the tasks.
    public var pipeline: Pipeline

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version", model, export, components, pipeline
    }

    /// What the conversion run was asked for.
    public struct Export: Codable, Equatable, Sendable {
        /// "ane" (Neural Engine weight formats, cpuAndNeuralEngine) or "gpu" (per-block int4, cpuAndGPU)
        public var target: String
        /// `partial`: some components were left out on purpose.
        public var partial: Bool
        /// `components`: the components asked for.
        public var components: [String]
    }

    /// The exported checkpoint.
    public struct Model: Codable, Equatable, Sendable {
        /// `id`: the model id (a hub id or a local name).
        public var id: String
        /// `revision`: the checkpoint revision, when known.
        public var revision: String?
        /// `diffusion_name_or_path`: where the diffusion parts came from.
        public var diffusionNameOrPath: String
        /// `synthetic`: a demo checkpoint with random weights.
        public var synthetic: Bool
        enum CodingKeys: String, CodingKey {
            case id, revision, diffusionNameOrPath = "diffusion_name_or_path", synthetic
        }
    }

    /// A file of the export with its checksum.
    public struct FileEntry: Codable, Equatable, Sendable {
        /// `file`: path relative to the manifest.
        public var file: String
        /// `sha256`: hex digest (`BundleHash.sha256`).
        public var sha256: String
        /// `bytes`: size in bytes.
        public var bytes: Int
    }

    /// Element types of bundle inputs and outputs.
    public enum DType: String, Codable, Sendable { case float16, float32, int32 }

    /// A table beside a bundle, row-major, of `shape`: `dtype` "float16" (raw little-endian fp16)
    /// "int4_row_scale" or "int8_row_scale" (int4 / int8 rows, each followed by its fp16
    /// scale; `EmbeddingTable`).
    public struct TableFile: Codable, Equatable, Sendable {
        /// `file`: path relative to the manifest.
        public var file: String
        /// `sha256`: hex digest of the table file.
        public var sha256: String
        /// `bytes`: size in bytes.
        public var bytes: Int
        /// `shape`: [rows, columns].
        public var shape: [Int]
        /// `dtype`: "float16", "int4_row_scale" or "int8_row_scale".
        public var dtype: String
    }

    /// Constants of the inputs the app computes (weights/bundles/contract.py, host side).
    public struct HostInputs: Codable, Equatable, Sendable {
        /// `embeddings`: the file of the token-embedding table (in the llm component's tables).
        public var embeddings: String
        /// `rope_theta`: RoPE base frequency.
        public var ropeTheta: Double
        /// `head_dim`: attention head size (RoPE cos/sin rows).
        public var headDim: Int
        /// `chunk_length`: tokens per prefill call.
        public var chunkLength: Int
        /// `context_length`: KV-cache slots, the most prompt + answer tokens.
        public var contextLength: Int
        /// `mask_bias`: the additive bias of masked attention positions.
        public var maskBias: Double
        /// `timestep_channels`: DiT timestep-feature width.
        public var timestepChannels: Int
        /// `timestep_max_period`: the sinusoid's longest period.
        public var timestepMaxPeriod: Double
        /// `timestep_order`: cos/sin order of the timestep features.
        public var timestepOrder: String
        enum CodingKeys: String, CodingKey {
            case embeddings, ropeTheta = "rope_theta", headDim = "head_dim", chunkLength = "chunk_length"
            case contextLength = "context_length", maskBias = "mask_bias", timestepChannels = "timestep_channels"
            case timestepMaxPeriod = "timestep_max_period", timestepOrder = "timestep_order"
        }
    }

    /// An input or output of a bundle.
    public struct TensorSpec: Codable, Equatable, Sendable {
        /// `name`: the feature name.
        public var name: String
        /// `shape`: the default shape.
        public var shape: [Int]
        /// `dtype`: the element type.
        public var dtype: DType
        /// `layout`: comma-separated axis names.
        public var layout: String
        /// axis index (as text) -> allowed sizes
        public var enumerated: [String: [Int]]?

        /// The axis names of `layout`.
        public var axes: [String] { layout.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }

        /// The sizes an axis accepts (its enumerated sizes, else the default shape's).
        public func allowedSizes(axis: Int) -> [Int] { enumerated?[String(axis)] ?? [shape[axis]] }
    }

    /// The Core ML compute units a bundle is meant for.
    public enum ComputeUnits: String, Codable, Sendable { case all, cpuOnly, cpuAndGPU, cpuAndNeuralEngine }

    /// The inputs and outputs of one function of a (multifunction) bundle.
    public struct FunctionIO: Codable, Equatable, Sendable {
        /// `inputs` of the function.
        public var inputs: [TensorSpec]
        /// `outputs` of the function.
        public var outputs: [TensorSpec]
        /// The I/O of one function.
        public init(inputs: [TensorSpec], outputs: [TensorSpec]) { self.inputs = inputs; self.outputs = outputs }
    }

    /// One exported bundle (or chunked bundle).
    public struct Component: Codable, Equatable, Sendable {
        /// `name`: the component (llm, vision_encoder, mcp, dit, vae_decoder).
        public var name: String
        /// `file`: the bundle's path (nil when chunked).
        public var file: String?
        /// `sha256`: the bundle's digest (nil when chunked).
        public var sha256: String?
        /// `bytes`: the bundle's size (nil when chunked).
        public var bytes: Int?
        /// `chunks`: the chunk bundles in execution order, when split.
        public var chunks: [FileEntry]?
        /// `inputs` of the default function.
        public var inputs: [TensorSpec]
        /// `outputs` of the default function.
        public var outputs: [TensorSpec]
        /// `states`: stateful buffers (the llm's KV cache).
        public var states: [TensorSpec]
        /// `functions`: the bundle's function names, the default first.
        public var functions: [String]
        /// multifunction bundles: function name -> its I/O (`inputs`/`outputs` are the default
        /// function's, `functions[0]`); nil for single-function bundles
        public var functionIO: [String: FunctionIO]?
        /// the compute units the bundle is meant for; they follow `target`, and the runner
        /// loads each bundle with them (`CoreMLComponent`)
        public var computeUnits: ComputeUnits
        /// the deployment target it was converted for: "ane" or "gpu"
        public var target: String?
        /// `minimum_os`: platform -> lowest OS version.
        public var minimumOS: [String: String]
        /// `compression`: the compression recipe applied.
        public var compression: [String: JSONValue]
        /// parity evidence from conversion: PSNR (dB) per gate
        public var gates: [String: Double]
        /// `conversion`: conversion timings and sizes.
        public var conversion: [String: Double]?
        /// tables the app reads beside the bundle (raw little-endian fp16, row-major), e.g. the
        /// llm's token embeddings [vocab, hidden]
        public var tables: [TableFile]?
        /// `python -m coreml_convert.lint` summary (ops eligible / at risk / off the Neural Engine)
        public var lint: [String: JSONValue]?

        enum CodingKeys: String, CodingKey {
            case name, file, sha256, bytes, chunks, inputs, outputs, states, functions, functionIO = "function_io"
            case computeUnits = "compute_units", target, minimumOS = "minimum_os", compression, gates, conversion, tables = "files", lint
        }

        /// The table file named `file` (e.g. `Manifest.Pipeline.hostInputs.embeddings`).
        public func table(_ file: String) -> TableFile? { tables?.first { $0.file == file } }

        /// The bundle files in execution order (one, or the chunks).
        public var files: [FileEntry] {
            if let chunks { return chunks }
            return [FileEntry(file: file ?? "", sha256: sha256 ?? "", bytes: bytes ?? 0)]
        }

        /// The I/O of `function` (nil: the default function); nil when the manifest does not list it.
        public func io(function: String? = nil) -> FunctionIO? {
            if let function, let io = functionIO?[function] { return io }
            guard function == nil || function == functions.first else { return nil }
            return FunctionIO(inputs: inputs, outputs: outputs)
        }

        /// The spec of input `name` of `function` (nil: the default function).
        public func input(_ name: String, function: String? = nil) -> TensorSpec? {
            io(function: function)?.inputs.first { $0.name == name }
        }
        /// The spec of output `name` of `function` (nil: the default function).
        public func output(_ name: String, function: String? = nil) -> TensorSpec? {
            io(function: function)?.outputs.first { $0.name == name }
        }
    }

    /// The image sampler.
    public struct Scheduler: Codable, Equatable, Sendable {
        /// `type`: the sampler's type in the sampler table (`Samplers.byType`).
        public var type: String
        /// `class_name`: the diffusers class it mirrors.
        public var className: String
        /// `config`: the diffusers scheduler config.
        public var config: SchedulerConfig
        enum CodingKeys: String, CodingKey { case type, className = "class_name", config }
    }

    /// Task defaults.
    public struct Defaults: Codable, Equatable, Sendable {
        /// `steps`: denoising steps.
        public var steps: Int
        /// `guidance`: classifier-free guidance scale.
        public var guidance: Double
        /// `temperature`: text sampling temperature (0 = greedy).
        public var temperature: Double
        /// `top_p`: nucleus filter (1 = off).
        public var topP: Double
        /// `top_k`: top-k filter (0 or absent = off).
        public var topK: Int?  // absent in older manifests: off
        /// `max_new_tokens`: the longest answer.
        public var maxNewTokens: Int
        enum CodingKeys: String, CodingKey {
            case steps, guidance, temperature, topP = "top_p", topK = "top_k", maxNewTokens = "max_new_tokens"
        }
    }

    /// How the LLM conditions the DiT.
    public struct Conditioning: Codable, Equatable, Sendable {
        /// `hidden_states`: how many last hidden states the MCP fuses.
        public var hiddenStates: Int
        /// `llm_hidden_size`: the LLM's width.
        public var llmHiddenSize: Int
        /// `caption_channels`: the conditioning width.
        public var captionChannels: Int
        /// `image_tokens`: tokens an image takes in the prompt.
        public var imageTokens: Int
        /// `unconditional`: how the unconditional branch is made ("zeros").
        public var unconditional: String
        enum CodingKeys: String, CodingKey {
            case hiddenStates = "hidden_states", llmHiddenSize = "llm_hidden_size"
            case captionChannels = "caption_channels", imageTokens = "image_tokens", unconditional
        }
    }

    /// How a photo becomes the vision encoder's input.
    public struct ImagePreprocess: Codable, Equatable, Sendable {
        /// `size`: the square side in pixels.
        public var size: Int
        /// `pad_color`: the RGB fill when expanding to a square.
        public var padColor: [Int]
        /// `resample`: the resize filter.
        public var resample: String
        /// `rescale_factor`: byte -> [0, 1] factor.
        public var rescaleFactor: Double
        /// `image_mean`: per-channel mean subtracted.
        public var imageMean: [Double]
        /// `image_std`: per-channel std divided by.
        public var imageStd: [Double]
        enum CodingKeys: String, CodingKey {
            case size, padColor = "pad_color", resample, rescaleFactor = "rescale_factor"
            case imageMean = "image_mean", imageStd = "image_std"
        }

        /// Preprocessing built by hand (tests, previews); the defaults are Mobile-O's FastViT's.
        public init(size: Int, padColor: [Int] = [0, 0, 0], resample: String = "bicubic", rescaleFactor: Double = 1.0 / 255,
                    imageMean: [Double] = [0, 0, 0], imageStd: [Double] = [1, 1, 1]) {
            self.size = size; self.padColor = padColor; self.resample = resample; self.rescaleFactor = rescaleFactor
            self.imageMean = imageMean; self.imageStd = imageStd
        }
    }

    /// The prompt templates (weights/core/prompts.py).
    public struct Prompts: Codable, Equatable, Sendable {
        /// `system`: the system prompt.
        public var system: String
        /// `chat`: the chat template around a user turn (`{qs}`).
        public var chat: String
        /// `generation`: the generation prompt (`{prompt}`).
        public var generation: String
        /// `understanding`: the understanding prompt (`{question}`).
        public var understanding: String
        /// `editing`: the editing prompt (`{instruction}`).
        public var editing: String
        /// `image_placeholder`: the text that stands for the image.
        public var imagePlaceholder: String
        /// `max_prompt_tokens`: the longest prompt, image tokens included.
        public var maxPromptTokens: Int
        enum CodingKeys: String, CodingKey {
            case system, chat, generation, understanding, editing
            case imagePlaceholder = "image_placeholder", maxPromptTokens = "max_prompt_tokens"
        }
    }

    /// A special token and its id.
    public struct SpecialToken: Codable, Equatable, Sendable {
        /// `name`: the token's text.
        public var name: String
        /// `id`: its id.
        public var id: Int
    }

    /// The tokenizer the export was made with.
    public struct TokenizerInfo: Codable, Equatable, Sendable {
        /// `type`: the tokenizer family.
        public var type: String
        /// `files`: the tokenizer files beside the manifest.
        public var files: [FileEntry]
        /// `vocab_size`: the LLM's vocabulary size.
        public var vocabSize: Int
        /// `special_tokens`: special tokens and ids the tokenizer must agree with.
        public var specialTokens: [SpecialToken]
        /// role (pad, eos, im_start, im_end, image, ...) -> special token name
        public var roles: [String: String]
        enum CodingKeys: String, CodingKey {
            case type, files, vocabSize = "vocab_size", specialTokens = "special_tokens", roles
        }

        /// The id of the special token of `role` (nil when the manifest names none).
        public func id(ofRole role: String) -> Int? {
            guard let name = roles[role] else { return nil }
            return specialTokens.first { $0.name == name }?.id
        }

        /// Path of tokenizer.json, relative to the manifest's folder.
        public var tokenizerJSON: String? { files.first { $0.file.hasSuffix("tokenizer.json") }?.file }
    }

    /// What the app needs to run the tasks.
    public struct Pipeline: Codable, Equatable, Sendable {
        /// `scheduler`: the default sampler and its config.
        public var scheduler: Scheduler
        /// `defaults`: task defaults.
        public var defaults: Defaults
        /// `latent_shape`: [C, H, W] of the DiT's latents.
        public var latentShape: [Int]
        /// `image_size`: the output image's side.
        public var imageSize: Int
        /// `vae_scaling_factor`: latents are divided by it before decoding.
        public var vaeScalingFactor: Double
        /// `conditioning`: how the LLM conditions the DiT.
        public var conditioning: Conditioning
        /// `image_preprocess`: the vision encoder's input preparation.
        public var imagePreprocess: ImagePreprocess
        /// `host_inputs`: constants of the inputs the app computes.
        public var hostInputs: HostInputs
        /// `prompts`: the prompt templates.
        public var prompts: Prompts
        /// `tokenizer`: the tokenizer facts.
        public var tokenizer: TokenizerInfo
        enum CodingKeys: String, CodingKey {
            case scheduler, defaults, latentShape = "latent_shape", imageSize = "image_size"
            case vaeScalingFactor = "vae_scaling_factor", conditioning, imagePreprocess = "image_preprocess"
            case hostInputs = "host_inputs", prompts, tokenizer
        }
    }

    /// The component named `name`, nil when the export has none.
    public func component(_ name: String) -> Component? { components.first { $0.name == name } }

    // MARK: - loading

    /// A JSONDecoder that reads the manifest's "Infinity" / "-Infinity" / "NaN" strings.
    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.nonConformingFloatDecodingStrategy = .convertFromString(
            positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
        return d
    }

    /// Decode and validate; `source` names the file in error messages.
    public static func decode(_ data: Data, source: String = fileName) throws -> Manifest {
        let m: Manifest
        do {
            m = try decoder().decode(Manifest.self, from: data)
        } catch let e as DecodingError {
            throw MobileOError(.manifest, "\(source): \(describe(e))",
                               fix: "re-export with `python -m coreml_convert` and check with `python -m ios_bridge.validate`.")
        } catch {
            throw MobileOError(.manifest, "\(source): not valid JSON (\(error.localizedDescription)).",
                               fix: "re-export with `python -m coreml_convert`.")
        }
        try m.validate(source: source)
        return m
    }

    /// `folder/manifest.json` (or the file itself), decoded and validated.
    public static func load(from url: URL) throws -> Manifest {
        var isDir: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir)
        let file = exists && isDir.boolValue ? url.appendingPathComponent(fileName) : url
        guard let data = FileManager.default.contents(atPath: file.path) else {
            throw MobileOError(.manifest, "\(file.path) does not exist or cannot be read.",
                               fix: "add the export folder (manifest.json + bundles) to the app bundle.")
        }
        return try decode(data, source: file.path)
    }

    private static func describe(_ e: DecodingError) -> String {
        func path(_ p: [CodingKey]) -> String {
            let s = p.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return s.hasPrefix(".") ? String(s.dropFirst()) : (s.isEmpty ? "(root)" : s)
        }
        switch e {
        case .keyNotFound(let key, let ctx):
            let parent = path(ctx.codingPath)
            return "missing key '\(key.stringValue)' at \(parent)."
        case .typeMismatch(let type, let ctx):
            return "wrong type at \(path(ctx.codingPath)): expected \(type)."
        case .valueNotFound(let type, let ctx):
            return "null at \(path(ctx.codingPath)) where \(type) is required."
        case .dataCorrupted(let ctx):
            if ctx.codingPath.isEmpty { return "not valid JSON." }
            return "invalid value at \(path(ctx.codingPath)): \(ctx.debugDescription)"
        @unknown default:
            return "cannot be decoded (\(e))."
        }
    }
}

// MARK: - validation (what the Codable types cannot say)

extension Manifest {
    /// Checks what the Codable types cannot (versions, shapes, ranges, roles); throws `MobileOError`.
    public func validate(source: String = Manifest.fileName) throws {
        func fail(_ what: String, _ fix: String = "re-export with `python -m coreml_convert`.") -> MobileOError {
            MobileOError(.manifest, "\(source): \(what)", fix: fix)
        }
        guard schemaVersion == Manifest.supportedSchemaVersion else {
            throw fail("schema_version \(schemaVersion) is not supported (this package reads version \(Manifest.supportedSchemaVersion)).",
                       "use the MobileO package version that matches the exporter.")
        }
        guard !model.id.isEmpty else { throw fail("model.id is empty.") }
        var seen = Set<String>()
        for (i, c) in components.enumerated() {
            let at = "components[\(i)] (\(c.name))"
            guard seen.insert(c.name).inserted else { throw fail("\(at): component listed twice.") }
            let single = c.file != nil || c.sha256 != nil || c.bytes != nil
            if single == (c.chunks != nil) {
                throw fail("\(at): needs either file/sha256/bytes or chunks, not \(single ? "both" : "neither").")
            }
            if single, c.file == nil || c.sha256 == nil || c.bytes == nil {
                throw fail("\(at): file, sha256 and bytes must all be present.")
            }
            if let chunks = c.chunks, chunks.isEmpty { throw fail("\(at): chunks is empty.") }
            for f in c.files { try Manifest.check(f, at: at, fail: fail) }
            guard !c.outputs.isEmpty else { throw fail("\(at): has no outputs.") }
            guard !c.functions.isEmpty else { throw fail("\(at): has no functions.") }
            var groups = [("input", c.inputs), ("output", c.outputs), ("state", c.states)]
            for (fn, io) in (c.functionIO ?? [:]).sorted(by: { $0.key < $1.key }) {
                guard c.functions.contains(fn) else {
                    throw fail("\(at): function_io names '\(fn)', which is not among its functions \(c.functions).")
                }
                guard !io.inputs.isEmpty, !io.outputs.isEmpty else {
                    throw fail("\(at): function '\(fn)' needs inputs and outputs in function_io.")
                }
                if fn == c.functions[0], io != FunctionIO(inputs: c.inputs, outputs: c.outputs) {
                    throw fail("\(at): function_io of the default function '\(fn)' differs from inputs/outputs.")
                }
                groups += [("function '\(fn)' input", io.inputs), ("function '\(fn)' output", io.outputs)]
            }
            for (group, specs) in groups {
                var names = Set<String>()
                for t in specs {
                    guard names.insert(t.name).inserted else { throw fail("\(at): \(group) '\(t.name)' is listed twice.") }
                    if t.shape.isEmpty || t.shape.contains(where: { $0 < 1 }) {
                        throw fail("\(at): \(group) '\(t.name)' has shape \(t.shape); every dimension must be >= 1.")
                    }
                    if t.axes.count != t.shape.count {
                        throw fail("\(at): \(group) '\(t.name)' has layout '\(t.layout)' (\(t.axes.count) axes) for shape \(t.shape).")
                    }
                    for (axis, sizes) in t.enumerated ?? [:] {
                        guard let a = Int(axis), a >= 0, a < t.shape.count, !sizes.isEmpty else {
                            throw fail("\(at): \(group) '\(t.name)' has an invalid enumerated axis '\(axis)'.")
                        }
                    }
                }
            }
            for (gate, psnr) in c.gates where psnr.isNaN {
                throw fail("\(at): gate \(gate) is NaN; the conversion's parity check did not run.")
            }
        }
        try pipeline.validate(fail: fail)
    }

    static func check(_ f: FileEntry, at: String, fail: (String, String) -> MobileOError) throws {
        let hex = Set("0123456789abcdef")
        if f.file.isEmpty || f.file.hasPrefix("/") || f.file.split(separator: "/").contains("..") {
            throw fail("\(at): file '\(f.file)' must be a path inside the manifest's folder.", "re-export with `python -m coreml_convert`.")
        }
        if f.sha256.count != 64 || !f.sha256.allSatisfy({ hex.contains($0) }) {
            throw fail("\(at): sha256 '\(f.sha256)' of \(f.file) is not 64 lowercase hex digits.", "re-export with `python -m coreml_convert`.")
        }
        if f.bytes < 0 { throw fail("\(at): \(f.file) has a negative size.", "re-export with `python -m coreml_convert`.") }
    }
}

extension Manifest.Pipeline {
    func validate(fail: (String, String) -> MobileOError) throws {
        let fix = "re-export with `python -m coreml_convert`."
        do {
            _ = try makeSampler(steps: defaults.steps)
        } catch let e as MobileOError {
            throw fail("pipeline.scheduler: \(e.message)", fix)
        }
        if latentShape.count != 3 || latentShape.contains(where: { $0 < 1 }) {
            throw fail("pipeline.latent_shape \(latentShape) must be 3 positive sizes (C, H, W).", fix)
        }
        if !(vaeScalingFactor > 0) { throw fail("pipeline.vae_scaling_factor must be > 0.", fix) }
        if defaults.steps < 1 { throw fail("pipeline.defaults.steps must be >= 1.", fix) }
        if !(defaults.topP > 0 && defaults.topP <= 1) { throw fail("pipeline.defaults.top_p must be in (0, 1].", fix) }
        if defaults.temperature < 0 { throw fail("pipeline.defaults.temperature must be >= 0.", fix) }
        if (defaults.topK ?? 0) < 0 { throw fail("pipeline.defaults.top_k must be >= 0.", fix) }
        for (key, text, slot) in [("chat", prompts.chat, "{qs}"), ("generation", prompts.generation, "{prompt}"),
                                  ("understanding", prompts.understanding, "{question}"),
                                  ("editing", prompts.editing, "{instruction}")] where !text.contains(slot) {
            throw fail("pipeline.prompts.\(key) lacks its \(slot) slot.", fix)
        }
        for ph in [prompts.understanding, prompts.editing] where !ph.contains(prompts.imagePlaceholder) {
            throw fail("pipeline.prompts: '\(ph.prefix(30))...' lacks the image placeholder \(prompts.imagePlaceholder).", fix)
        }
        for role in ["pad", "eos", "im_start", "im_end", "image"] {
            guard tokenizer.id(ofRole: role) != nil else {
                throw fail("pipeline.tokenizer: role '\(role)' names no special token with an id.", fix)
            }
        }
        guard tokenizer.tokenizerJSON != nil else {
            throw fail("pipeline.tokenizer.files lists no tokenizer.json.", fix)
        }
        for f in tokenizer.files { try Manifest.check(f, at: "pipeline.tokenizer", fail: fail) }
        for t in tokenizer.specialTokens where t.id < 0 || t.id >= tokenizer.vocabSize {
            throw fail("pipeline.tokenizer: special token \(t.name) has id \(t.id) outside the vocabulary (\(tokenizer.vocabSize)).", fix)
        }
    }

    /// The sampler the manifest names, for `steps` steps.
    public func makeSampler(steps: Int) throws -> any Sampler {
        try Samplers.make(type: scheduler.type, config: scheduler.config, steps: steps)
    }
}
