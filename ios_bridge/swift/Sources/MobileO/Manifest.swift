import Foundation

/// `manifest.json`, written by `python -m coreml_convert` (ios_bridge/manifest.py) and
/// described by ios_bridge/schema.json.  Decode with `Manifest.load(from:)`, which also
/// validates; every fact the pipeline uses (scheduler, defaults, latent shape, prompts,
/// token ids, tensor specs) comes from here, none is hard-coded.
public struct Manifest: Codable, Equatable, Sendable {
    public static let supportedSchemaVersion = 3
    public static let fileName = "manifest.json"

    public var schemaVersion: Int
    public var model: Model
    /// what the conversion run was asked for (target, partial); `mobileo-validate` refuses an
    /// export missing a component unless it is declared partial
    public var export: Export?
    public var components: [Component]
    public var pipeline: Pipeline

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version", model, export, components, pipeline
    }

    public struct Export: Codable, Equatable, Sendable {
        /// "ane" (Neural Engine weight formats, cpuAndNeuralEngine) or "gpu" (per-block int4, cpuAndGPU)
        public var target: String
        public var partial: Bool
        public var components: [String]
    }

    public struct Model: Codable, Equatable, Sendable {
        public var id: String
        public var revision: String?
        public var diffusionNameOrPath: String
        public var synthetic: Bool
        enum CodingKeys: String, CodingKey {
            case id, revision, diffusionNameOrPath = "diffusion_name_or_path", synthetic
        }
    }

    public struct FileEntry: Codable, Equatable, Sendable {
        public var file: String
        public var sha256: String
        public var bytes: Int
    }

    public enum DType: String, Codable, Sendable { case float16, float32, int32 }

    /// A table beside a bundle, row-major, of `shape`: `dtype` "float16" (raw little-endian fp16)
    /// or "int8_row_scale" (int8 rows, each followed by its fp16 scale; `EmbeddingTable`).
    public struct TableFile: Codable, Equatable, Sendable {
        public var file: String
        public var sha256: String
        public var bytes: Int
        public var shape: [Int]
        public var dtype: String
    }

    /// Constants of the inputs the app computes (weights/bundles/contract.py, host side).
    public struct HostInputs: Codable, Equatable, Sendable {
        public var embeddings: String
        public var ropeTheta: Double
        public var headDim: Int
        public var chunkLength: Int
        public var contextLength: Int
        public var maskBias: Double
        public var timestepChannels: Int
        public var timestepMaxPeriod: Double
        public var timestepOrder: String
        enum CodingKeys: String, CodingKey {
            case embeddings, ropeTheta = "rope_theta", headDim = "head_dim", chunkLength = "chunk_length"
            case contextLength = "context_length", maskBias = "mask_bias", timestepChannels = "timestep_channels"
            case timestepMaxPeriod = "timestep_max_period", timestepOrder = "timestep_order"
        }
    }

    public struct TensorSpec: Codable, Equatable, Sendable {
        public var name: String
        public var shape: [Int]
        public var dtype: DType
        public var layout: String
        /// axis index (as text) -> allowed sizes
        public var enumerated: [String: [Int]]?

        public var axes: [String] { layout.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }

        public func allowedSizes(axis: Int) -> [Int] { enumerated?[String(axis)] ?? [shape[axis]] }
    }

    public enum ComputeUnits: String, Codable, Sendable { case all, cpuOnly, cpuAndGPU, cpuAndNeuralEngine }

    /// The inputs and outputs of one function of a (multifunction) bundle.
    public struct FunctionIO: Codable, Equatable, Sendable {
        public var inputs: [TensorSpec]
        public var outputs: [TensorSpec]
        public init(inputs: [TensorSpec], outputs: [TensorSpec]) { self.inputs = inputs; self.outputs = outputs }
    }

    public struct Component: Codable, Equatable, Sendable {
        public var name: String
        public var file: String?
        public var sha256: String?
        public var bytes: Int?
        public var chunks: [FileEntry]?
        public var inputs: [TensorSpec]
        public var outputs: [TensorSpec]
        public var states: [TensorSpec]
        public var functions: [String]
        /// multifunction bundles: function name -> its I/O (`inputs`/`outputs` are the default
        /// function's, `functions[0]`); nil for single-function bundles
        public var functionIO: [String: FunctionIO]?
        /// the compute units the bundle is meant for; they follow `target`, and the runner
        /// loads each bundle with them (`CoreMLComponent`)
        public var computeUnits: ComputeUnits
        /// the deployment target it was converted for: "ane" or "gpu"
        public var target: String?
        public var minimumOS: [String: String]
        public var compression: [String: JSONValue]
        /// parity evidence from conversion: PSNR (dB) per gate
        public var gates: [String: Double]
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

        public func input(_ name: String, function: String? = nil) -> TensorSpec? {
            io(function: function)?.inputs.first { $0.name == name }
        }
        public func output(_ name: String, function: String? = nil) -> TensorSpec? {
            io(function: function)?.outputs.first { $0.name == name }
        }
    }

    public struct Scheduler: Codable, Equatable, Sendable {
        public var type: String
        public var className: String
        public var config: SchedulerConfig
        enum CodingKeys: String, CodingKey { case type, className = "class_name", config }
    }

    public struct Defaults: Codable, Equatable, Sendable {
        public var steps: Int
        public var guidance: Double
        public var temperature: Double
        public var topP: Double
        public var topK: Int?  // absent in older manifests: off
        public var maxNewTokens: Int
        enum CodingKeys: String, CodingKey {
            case steps, guidance, temperature, topP = "top_p", topK = "top_k", maxNewTokens = "max_new_tokens"
        }
    }

    public struct Conditioning: Codable, Equatable, Sendable {
        public var hiddenStates: Int
        public var llmHiddenSize: Int
        public var captionChannels: Int
        public var imageTokens: Int
        public var unconditional: String
        enum CodingKeys: String, CodingKey {
            case hiddenStates = "hidden_states", llmHiddenSize = "llm_hidden_size"
            case captionChannels = "caption_channels", imageTokens = "image_tokens", unconditional
        }
    }

    public struct ImagePreprocess: Codable, Equatable, Sendable {
        public var size: Int
        public var padColor: [Int]
        public var resample: String
        public var rescaleFactor: Double
        public var imageMean: [Double]
        public var imageStd: [Double]
        enum CodingKeys: String, CodingKey {
            case size, padColor = "pad_color", resample, rescaleFactor = "rescale_factor"
            case imageMean = "image_mean", imageStd = "image_std"
        }
    }

    public struct Prompts: Codable, Equatable, Sendable {
        public var system: String
        public var chat: String
        public var generation: String
        public var understanding: String
        public var editing: String
        public var imagePlaceholder: String
        public var maxPromptTokens: Int
        enum CodingKeys: String, CodingKey {
            case system, chat, generation, understanding, editing
            case imagePlaceholder = "image_placeholder", maxPromptTokens = "max_prompt_tokens"
        }
    }

    public struct SpecialToken: Codable, Equatable, Sendable {
        public var name: String
        public var id: Int
    }

    public struct TokenizerInfo: Codable, Equatable, Sendable {
        public var type: String
        public var files: [FileEntry]
        public var vocabSize: Int
        public var specialTokens: [SpecialToken]
        /// role (pad, eos, im_start, im_end, image, ...) -> special token name
        public var roles: [String: String]
        enum CodingKeys: String, CodingKey {
            case type, files, vocabSize = "vocab_size", specialTokens = "special_tokens", roles
        }

        public func id(ofRole role: String) -> Int? {
            guard let name = roles[role] else { return nil }
            return specialTokens.first { $0.name == name }?.id
        }

        /// Path of tokenizer.json, relative to the manifest's folder.
        public var tokenizerJSON: String? { files.first { $0.file.hasSuffix("tokenizer.json") }?.file }
    }

    public struct Pipeline: Codable, Equatable, Sendable {
        public var scheduler: Scheduler
        public var defaults: Defaults
        public var latentShape: [Int]
        public var imageSize: Int
        public var vaeScalingFactor: Double
        public var conditioning: Conditioning
        public var imagePreprocess: ImagePreprocess
        public var hostInputs: HostInputs
        public var prompts: Prompts
        public var tokenizer: TokenizerInfo
        enum CodingKeys: String, CodingKey {
            case scheduler, defaults, latentShape = "latent_shape", imageSize = "image_size"
            case vaeScalingFactor = "vae_scaling_factor", conditioning, imagePreprocess = "image_preprocess"
            case hostInputs = "host_inputs", prompts, tokenizer
        }
    }

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
