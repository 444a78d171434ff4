#if canImport(CoreML)
import CoreML
import Foundation

// The model runners over the exported Core ML bundles (I/O as documented in
// coreml_convert/components/*.py and listed in manifest.json):
//   vision_encoder  image (1,3,S,S) -> image_features (1,D,1,N)
//   llm             one multifunction bundle over one weight set, every input fp16 and computed
//                   here (HostInputs.swift; embeddings from the table beside it):
//                   "hidden_states" embeds, cos, sin (L columns), attention_bias (1,L,1,L)
//                                   -> hidden_states (K,D,1,L)            [generation, editing]
//                   "prefill"       a chunk of P tokens into the KV cache  [understanding]
//                   "decode"        one token -> logits_0 .. logits_n (each <= 16384 wide)
//                   "prefill" and "decode" share the states key_cache / value_cache
//                   (layers, kv_heads, T, D), written in place at the int32 `position`
//                   input (HostInputs.cachePosition): one slot per decoded token; each
//                   function's I/O is the manifest's function_io
//   mcp             hidden_states (K,D,1,S), attention_mask (1,S) -> conditioning (1,Cc,1,S)
//   dit             latent (2,C,H,W), timestep_features (2,F,1,1) (HostInputs.timestepFeatures),
//                   encoder_hidden_states (2,Cc,1,S), encoder_attention_mask (2,S) -> velocity
//   vae_decoder     latent (1,C,h,w) -> image (1,3,H,W) in [0, 1]
// Sequences are right-padded to the bundle's next enumerated length and masked.
//
// Predictions use Core ML's async API (`prediction(from:options:)`, with the state for the
// LLM's KV cache), so no cooperative thread is blocked and the engine's actor stays free
// during a call; cancellation is checked before each call and passed to Core ML's task.
// The runners are used by one task at a time (the engine and the pipeline queue their
// tasks), which is what their `@unchecked Sendable` relies on.

/// The Core ML runners of an export: loaders for `MobileOEngine`, all-at-once loading for
/// `MobileOPipeline`, and the compile cache's cleanup.
@available(iOS 18.0, macOS 15.0, *)
public enum CoreMLRunners {
    /// Load every bundle the manifest lists from `folder` (compiled once, cached by sha256),
    /// for `MobileOPipeline`.  `computeUnits` overrides the manifest's per-component choice.
    public static func load(manifest: Manifest, folder: URL, computeUnits: MLComputeUnits? = nil) async throws -> ModelRunners {
        let l = loaders(manifest: manifest, folder: folder, computeUnits: computeUnits)
        var vision: VisionRunner?
        if manifest.component("vision_encoder") != nil, let v = l.vision { vision = try await v() }
        return ModelRunners(llm: try await l.llm(), vision: vision, mcp: try await l.mcp(),
                            dit: try await l.dit(), vae: try await l.vae())
    }

    /// One loader per component, for `MobileOEngine` (which loads each when a task needs it).
    /// Bundles may be `.mlpackage` (compiled on first use into a race-free cache keyed by
    /// sha256: compiled aside, renamed atomically, one compile per key at a time) or
    /// `.mlmodelc` (loaded as is).  Models load with Core ML's async loader.  The LLM loads
    /// each of its functions (`functionName`) when a task first calls it: generation loads
    /// "hidden_states" only, understanding and chat "prefill" and "decode".
    public static func loaders(manifest: Manifest, folder: URL, computeUnits: MLComputeUnits? = nil) -> RunnerLoaders {
        @Sendable func component(_ name: String, function: String? = nil) async throws -> CoreMLComponent? {
            guard let spec = manifest.component(name) else { return nil }
            return try await CoreMLComponent(spec: spec, folder: folder, function: function, computeUnits: computeUnits)
        }
        @Sendable func required(_ name: String) async throws -> CoreMLComponent {
            guard let c = try await component(name) else {
                throw MobileOError(.runner, "manifest.json lists no \(name) component.",
                                   fix: "convert it: python -m coreml_convert --components \(name).")
            }
            return c
        }
        let p = manifest.pipeline
        var vision: (@Sendable () async throws -> VisionRunner)?
        if manifest.component("vision_encoder") != nil {
            vision = { @Sendable () async throws -> VisionRunner in CoreMLVision(try await required("vision_encoder")) }
        }
        return RunnerLoaders(
            llm: {
                let pad = p.tokenizer.id(ofRole: "pad") ?? 0
                guard let spec = manifest.component("llm"), let t = spec.table(p.hostInputs.embeddings), t.shape.count == 2 else {
                    throw MobileOError(.runner, "manifest.json lists no llm component with its embedding table.",
                                       fix: "convert it: python -m coreml_convert --components llm.")
                }
                let table = try EmbeddingTable(url: folder.appendingPathComponent(t.file), vocab: t.shape[0], hidden: t.shape[1],
                                               dtype: t.dtype)
                return CoreMLLanguageModel(load: { try await component("llm", function: $0) },
                                           table: table, host: p.hostInputs,
                                           imageTokens: p.conditioning.imageTokens, hidden: p.conditioning.llmHiddenSize,
                                           padId: pad)
            },
            vision: vision,
            mcp: { CoreMLMCP(try await required("mcp")) },
            dit: { CoreMLDiT(try await required("dit"), host: p.hostInputs) },
            vae: { CoreMLVAE(try await required("vae_decoder")) })
    }

    /// The compile cache (Caches/MobileO/<sha256>.mlmodelc): remove every compiled bundle that
    /// none of `keeping` lists (e.g. those of an older export).  Returns what it removed.
    @discardableResult
    public static func removeStaleCompiledModels(keeping manifests: [Manifest]) throws -> [URL] {
        let fm = FileManager.default
        let keep = Set(manifests.flatMap { $0.components.compactMap(\.sha256) })
        let caches = try CoreMLComponent.cacheFolder()
        let items = (try? fm.contentsOfDirectory(at: caches, includingPropertiesForKeys: nil)) ?? []
        var removed = [URL]()
        for url in items where url.pathExtension == "mlmodelc" && !keep.contains(url.deletingPathExtension().lastPathComponent) {
            try fm.removeItem(at: url)
            removed.append(url)
        }
        return removed
    }
}

/// One compiled bundle (or one function of a multifunction bundle).
@available(iOS 18.0, macOS 15.0, *)
public final class CoreMLComponent: @unchecked Sendable {  // immutable; predictions one task at a time
    /// The manifest's entry of the bundle.
    public let spec: Manifest.Component
    /// The function loaded (nil: the bundle's default); its I/O is `spec.io(function:)`.
    public let function: String?
    /// The loaded Core ML model.
    public let model: MLModel

    /// Compile (once, cached) and load `spec`'s bundle from `folder`, optionally one `function`.
    public init(spec: Manifest.Component, folder: URL, function: String? = nil,
                computeUnits: MLComputeUnits? = nil) async throws {
        guard spec.chunks == nil, let file = spec.file, let sha = spec.sha256 else {
            throw MobileOError(.runner, "\(spec.name) is split into chunks; this runner loads single bundles.")
        }
        self.spec = spec
        self.function = function
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits ?? Self.units(spec.computeUnits)
        if let function { config.functionName = function }
        let compiled = try await Self.compiled(folder.appendingPathComponent(file), sha256: sha)
        do {
            model = try await MLModel.load(contentsOf: compiled, configuration: config)
        } catch {
            throw MobileOError(.runner, "cannot load \(file)\(function.map { " (function \($0))" } ?? ""): \(error.localizedDescription)",
                               fix: "check the bundle with `python -m ios_bridge.validate` and the device OS (\(spec.minimumOS)).")
        }
    }

    static func units(_ u: Manifest.ComputeUnits) -> MLComputeUnits {
        switch u {
        case .all: return .all
        case .cpuOnly: return .cpuOnly
        case .cpuAndGPU: return .cpuAndGPU
        case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
        }
    }

    static func cacheFolder() throws -> URL {
        let fm = FileManager.default
        let caches = try fm.url(for: .cachesDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
            .appendingPathComponent("MobileO", isDirectory: true)
        try fm.createDirectory(at: caches, withIntermediateDirectories: true)
        return caches
    }

    /// The .mlmodelc of a bundle: an .mlmodelc as is (compiled ahead, e.g. by Xcode); an
    /// .mlpackage compiled on first use and kept in Caches/MobileO/<sha256>.mlmodelc
    /// (`CoreMLRunners.removeStaleCompiledModels` cleans it).
    static func compiled(_ bundle: URL, sha256: String) async throws -> URL {
        let fm = FileManager.default
        var bundle = bundle
        if !fm.fileExists(atPath: bundle.path), bundle.pathExtension == "mlpackage" {
            // an app may ship the bundle compiled: Xcode turns x.mlpackage into x.mlmodelc
            let c = bundle.deletingPathExtension().appendingPathExtension("mlmodelc")
            if fm.fileExists(atPath: c.path) { bundle = c }
        }
        guard fm.fileExists(atPath: bundle.path) else {
            throw MobileOError(.runner, "\(bundle.path) does not exist.",
                               fix: "add the export folder (manifest.json and every bundle it lists) to the app.")
        }
        if bundle.pathExtension == "mlmodelc" { return bundle }
        return try await CompileCache.shared.compiled(bundle, sha256: sha256, into: try cacheFolder())
    }

    /// The manifest's spec of an input (of the loaded function).
    func input(_ name: String) throws -> Manifest.TensorSpec {
        guard let t = spec.input(name, function: function) else {
            let of = function.map { " (function \($0))" } ?? ""
            throw MobileOError(.runner, "\(spec.name)\(of) has no input '\(name)' in manifest.json.",
                               fix: "re-export with the matching coreml_convert version.")
        }
        return t
    }

    /// Smallest allowed size >= n of an input axis (enumerated shapes).
    func length(_ n: Int, input name: String, axis: Int) throws -> Int {
        let t = try input(name)
        guard let s = t.allowedSizes(axis: axis).sorted().first(where: { $0 >= n }) else {
            throw MobileOError(.runner, "\(spec.name): a sequence of \(n) is longer than the bundle's longest (\(t.allowedSizes(axis: axis).max() ?? 0)).",
                               fix: "shorten the prompt.")
        }
        return s
    }

    /// A multiarray for input `name` in its manifest dtype.
    func array(_ name: String, shape: [Int], _ values: [Float]) throws -> MLMultiArray {
        try MultiArrays.make(shape: shape, dtype: try input(name).dtype, values: values)
    }

    /// One async prediction (with `state` for a stateful function); cancellation is checked
    /// before and after it, and Core ML's task sees the caller's cancellation.
    func predict(_ inputs: [String: MLMultiArray], state: MLState? = nil) async throws -> MLFeatureProvider {
        try Task.checkCancellation(orThrow: MobileOError.cancelled)
        let provider = try MLDictionaryFeatureProvider(dictionary: inputs.mapValues { MLFeatureValue(multiArray: $0) })
        let out: MLFeatureProvider
        do {
            if let state {
                out = try await model.prediction(from: provider, using: state, options: MLPredictionOptions())
            } else {
                out = try await model.prediction(from: provider, options: MLPredictionOptions())
            }
        } catch is CancellationError {
            throw MobileOError.cancelled
        } catch {
            if Task.isCancelled { throw MobileOError.cancelled }
            throw MobileOError(.runner, "\(spec.name) prediction failed: \(error.localizedDescription)")
        }
        try Task.checkCancellation(orThrow: MobileOError.cancelled)
        return out
    }

    func output(_ out: MLFeatureProvider, _ name: String) throws -> Tensor {
        guard let a = out.featureValue(for: name)?.multiArrayValue else {
            throw MobileOError(.runner, "\(spec.name) returned no output '\(name)'.")
        }
        return MultiArrays.read(a)
    }
}

/// The compile cache: one compile per key at a time (concurrent loaders of the same bundle
/// await the first), compiled aside and renamed into place atomically, so two loaders (or
/// two processes) never see a half-written `<sha256>.mlmodelc`.
@available(iOS 18.0, macOS 15.0, *)
actor CompileCache {
    static let shared = CompileCache()
    private var inFlight: [String: Task<URL, Error>] = [:]

    func compiled(_ bundle: URL, sha256: String, into caches: URL) async throws -> URL {
        let target = caches.appendingPathComponent("\(sha256).mlmodelc")
        if FileManager.default.fileExists(atPath: target.path) { return target }
        if let running = inFlight[sha256] { return try await running.value }
        LoadEvents.compiling()  // a .compiling progress event for the component being loaded
        let task = Task<URL, Error> {
            let temp = try await MLModel.compileModel(at: bundle)
            let aside = caches.appendingPathComponent("\(sha256).\(UUID().uuidString).partial")
            try FileManager.default.moveItem(at: temp, to: aside)
            // rename(2) is atomic; it fails when another process put the target there first
            if rename(aside.path, target.path) != 0 {
                try? FileManager.default.removeItem(at: aside)
                guard FileManager.default.fileExists(atPath: target.path) else {
                    throw MobileOError(.runner, "cannot move the compiled \(bundle.lastPathComponent) into \(caches.path).",
                                       fix: "check the free space of the device.")
                }
            }
            return target
        }
        inFlight[sha256] = task
        defer { inFlight[sha256] = nil }
        return try await task.value
    }
}

/// MLMultiArray <-> Tensor, honouring strides; fp16 as raw bits (see `Half`).
@available(iOS 18.0, macOS 15.0, *)
enum MultiArrays {
    static func make(shape: [Int], dtype: Manifest.DType, values: [Float]) throws -> MLMultiArray {
        guard shape.reduce(1, *) == values.count else {
            throw MobileOError(.runner, "an input of shape \(shape) cannot hold \(values.count) values.")
        }
        let type: MLMultiArrayDataType = dtype == .float16 ? .float16 : (dtype == .int32 ? .int32 : .float32)
        let a = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: type)
        a.withUnsafeMutableBytes { raw, strides in
            forEachIndex(shape, strides) { logical, offset in
                let v = values[logical]
                switch dtype {
                case .float16: raw.storeBytes(of: Half.bits(v), toByteOffset: offset * 2, as: UInt16.self)
                case .float32: raw.storeBytes(of: v, toByteOffset: offset * 4, as: Float.self)
                case .int32: raw.storeBytes(of: Int32(v), toByteOffset: offset * 4, as: Int32.self)
                }
            }
        }
        return a
    }

    static func read(_ a: MLMultiArray) -> Tensor {
        let shape = a.shape.map { $0.intValue }, strides = a.strides.map { $0.intValue }
        var out = [Float](repeating: 0, count: shape.reduce(1, *))
        let type = a.dataType
        a.withUnsafeBytes { raw in
            forEachIndex(shape, strides) { logical, offset in
                switch type {
                case .float16: out[logical] = Half.value(raw.loadUnaligned(fromByteOffset: offset * 2, as: UInt16.self))
                case .float32: out[logical] = raw.loadUnaligned(fromByteOffset: offset * 4, as: Float.self)
                case .double: out[logical] = Float(raw.loadUnaligned(fromByteOffset: offset * 8, as: Double.self))
                case .int32: out[logical] = Float(raw.loadUnaligned(fromByteOffset: offset * 4, as: Int32.self))
                default: out[logical] = a[logical].floatValue
                }
            }
        }
        return Tensor(uncheckedShape: shape, data: out)
    }

    /// Visit every element: (row-major logical index, element offset from the strides).
    static func forEachIndex(_ shape: [Int], _ strides: [Int], _ body: (Int, Int) -> Void) {
        let n = shape.reduce(1, *)
        guard n > 0 else { return }
        var index = [Int](repeating: 0, count: shape.count)
        for logical in 0..<n {
            var offset = 0
            for (i, s) in strides.enumerated() { offset += index[i] * s }
            body(logical, offset)
            var axis = shape.count - 1
            while axis >= 0 {
                index[axis] += 1
                if index[axis] < shape[axis] { break }
                index[axis] = 0
                axis -= 1
            }
        }
    }
}

// MARK: - layouts: rows [L, C] <-> channels-first (C, 1, S) with right padding

func rowsToChannels(_ rows: Tensor, length s: Int) -> [Float] {
    let l = rows.shape[0], c = rows.shape[1]
    var out = [Float](repeating: 0, count: c * s)
    for p in 0..<l { for ch in 0..<c { out[ch * s + p] = rows.data[p * c + ch] } }
    return out
}

/// (B, C, 1, S) -> B tensors [l, C] (the first l positions).
func channelsToRows(_ t: Tensor, keep l: Int) -> [Tensor] {
    let b = t.shape[0], c = t.shape[1], s = t.shape[3]
    return (0..<b).map { i in
        var rows = [Float](repeating: 0, count: l * c)
        for p in 0..<l { for ch in 0..<c { rows[p * c + ch] = t.data[(i * c + ch) * s + p] } }
        return Tensor(uncheckedShape: [l, c], data: rows)
    }
}

// MARK: - runners

@available(iOS 18.0, macOS 15.0, *)
final class CoreMLVision: VisionRunner, @unchecked Sendable {
    let c: CoreMLComponent
    init(_ c: CoreMLComponent) { self.c = c }

    func imageEmbeddings(_ pixels: Tensor) async throws -> Tensor {
        let out = try await c.predict(["image": try c.array("image", shape: [1] + pixels.shape, pixels.data)])
        let f = try c.output(out, "image_features")  // (1, D, 1, N)
        return channelsToRows(f, keep: f.shape[3])[0]
    }
}

@available(iOS 18.0, macOS 15.0, *)
final class CoreMLLanguageModel: LanguageModelRunner, @unchecked Sendable {  // one task at a time
    /// Loads one function of the llm bundle (nil: the manifest lists no llm).
    let load: @Sendable (String) async throws -> CoreMLComponent?
    let table: EmbeddingTable, host: Manifest.HostInputs
    let imageTokens: Int, hidden: Int, padId: Int
    private var functions: [String: CoreMLComponent] = [:]
    private var state: MLState?
    private var position = 0

    init(load: @escaping @Sendable (String) async throws -> CoreMLComponent?, table: EmbeddingTable,
         host: Manifest.HostInputs, imageTokens: Int, hidden: Int, padId: Int) {
        self.load = load
        self.table = table; self.host = host
        self.imageTokens = imageTokens; self.hidden = hidden; self.padId = padId
    }

    /// The function `name`, loaded on first use (a task loads only the functions it calls).
    func function(_ name: String, for task: String) async throws -> CoreMLComponent {
        if let f = functions[name] { return f }
        guard let f = try await load(name) else {
            throw MobileOError(.runner, "manifest.json lists no llm component; \(task) needs it.",
                               fix: "convert it: python -m coreml_convert --components llm.")
        }
        functions[name] = f
        return f
    }

    /// The prompt's embedding rows [L, D]: token rows from the table, the image's rows in place
    /// of its N columns (Mobile-O's `<image>` expansion).
    func embedRows(_ prompt: [PromptSegment]) throws -> Tensor {
        var rows = [Float](), count = 0, images = 0
        for seg in prompt {
            switch seg {
            case .tokens(let t):
                rows += try table.rows(t).data; count += t.count
            case .image(let e):
                images += 1
                guard images == 1 else { throw MobileOError(.runner, "the Core ML LLM takes one image per prompt.") }
                guard e.shape == [imageTokens, hidden] else {
                    throw MobileOError(.runner, "image embeddings have shape \(e.shape); the LLM takes [\(imageTokens), \(hidden)].")
                }
                rows += e.data; count += imageTokens
            }
        }
        return Tensor(uncheckedShape: [count, hidden], data: rows)
    }

    /// Rows [a, b) of `rows` right-padded with the pad token's embedding to `length` columns,
    /// channels-first (D, 1, length).
    func columns(_ rows: Tensor, _ a: Int, _ b: Int, length: Int) throws -> [Float] {
        let pad = try table.rows([Int](repeating: padId, count: length - (b - a)))
        let part = Array(rows.data[(a * hidden)..<(b * hidden)]) + pad.data
        return rowsToChannels(Tensor(uncheckedShape: [length, hidden], data: part), length: length)
    }

    func stepInputs(_ c: CoreMLComponent, embeds: [Float], at start: Int, count s: Int) throws -> [String: MLMultiArray] {
        let slots = host.contextLength
        let pos = Array(start..<start + s)
        let (cos, sin) = HostInputs.rope(positions: pos, headDim: host.headDim, theta: host.ropeTheta)
        return [
            "embeds": try c.array("embeds", shape: [1, hidden, 1, s], embeds),
            "cos": try c.array("cos", shape: [1, host.headDim, 1, s], cos),
            "sin": try c.array("sin", shape: [1, host.headDim, 1, s], sin),
            "attention_bias": try c.array("attention_bias", shape: [1, slots, 1, s],
                                          HostInputs.causalBias(queries: pos, keys: Array(0..<slots), maskBias: Float(host.maskBias))),
            "position": try c.array("position", shape: [1],
                                    try HostInputs.cachePosition(position: start, count: s, slots: slots)),
        ]
    }

    func hiddenStates(_ prompt: [PromptSegment], count: Int) async throws -> [Tensor] {
        let c = try await function("hidden_states", for: "generation and editing")
        let rows = try embedRows(prompt)
        let n = rows.shape[0]
        let s = try c.length(n, input: "embeds", axis: 3)
        let pos = Array(0..<s)
        let (cos, sin) = HostInputs.rope(positions: pos, headDim: host.headDim, theta: host.ropeTheta)
        let bias = HostInputs.causalBias(queries: pos, keys: pos, keyValid: pos.map { $0 < n }, maskBias: Float(host.maskBias))
        let out = try await c.predict([
            "embeds": try c.array("embeds", shape: [1, hidden, 1, s], try columns(rows, 0, n, length: s)),
            "cos": try c.array("cos", shape: [1, host.headDim, 1, s], cos),
            "sin": try c.array("sin", shape: [1, host.headDim, 1, s], sin),
            "attention_bias": try c.array("attention_bias", shape: [1, s, 1, s], bias),
        ])
        let states = channelsToRows(try c.output(out, "hidden_states"), keep: n)
        guard states.count == count else {
            throw MobileOError(.runner, "the llm returns \(states.count) hidden states; the pipeline asked for \(count).")
        }
        return states
    }

    func prefill(_ prompt: [PromptSegment]) async throws -> [Float] {
        let chunk = try await function("prefill", for: "understanding")
        let step = try await function("decode", for: "understanding")
        let rows = try embedRows(prompt)
        guard rows.shape[0] > 0 else { throw MobileOError(.runner, "the prompt is empty.") }
        let fresh = step.model.makeState()  // "prefill" and "decode" share the KV cache
        let p = host.chunkLength
        let last = rows.shape[0] - 1
        var start = 0
        while start < last {
            let end = min(start + p, last)
            _ = try await chunk.predict(try stepInputs(chunk, embeds: try columns(rows, start, end, length: p), at: start, count: p),
                                  state: fresh)
            start += p
        }
        state = fresh
        position = last
        return try await decode(embeds: try columns(rows, last, last + 1, length: 1))
    }

    func decode(_ token: Int) async throws -> [Float] {
        try await decode(embeds: rowsToChannels(try table.rows([token]), length: 1))
    }

    func decode(embeds: [Float]) async throws -> [Float] {
        guard let step = functions["decode"], let state else {
            throw MobileOError(.runner, "decode was called before prefill.")
        }
        guard position < host.contextLength else {
            throw MobileOError(.runner, "the answer reached the KV cache's \(host.contextLength) positions.", fix: "ask for fewer new tokens.")
        }
        let out = try await step.predict(try stepInputs(step, embeds: embeds, at: position, count: 1), state: state)
        position += 1
        // logits_0, logits_1, ... in numeric order (a name with another suffix is not a logits slice)
        let names = (step.spec.io(function: "decode")?.outputs ?? step.spec.outputs).map(\.name)
            .compactMap { name -> (Int, String)? in
                guard name.hasPrefix("logits_"), let i = Int(name.dropFirst(7)) else { return nil }
                return (i, name)
            }
            .sorted { $0.0 < $1.0 }.map(\.1)
        guard !names.isEmpty else {
            throw MobileOError(.runner, "the llm's decode function lists no logits_<n> outputs in manifest.json.",
                               fix: "re-export with the matching coreml_convert version.")
        }
        return try names.flatMap { try step.output(out, $0).data }
    }
}

@available(iOS 18.0, macOS 15.0, *)
final class CoreMLMCP: ConditioningRunner, @unchecked Sendable {
    let c: CoreMLComponent
    init(_ c: CoreMLComponent) { self.c = c }

    func conditioning(_ hiddenStates: [Tensor]) async throws -> Tensor {
        let k = hiddenStates.count, l = hiddenStates[0].shape[0], d = hiddenStates[0].shape[1]
        let s = try c.length(l, input: "hidden_states", axis: 3)
        let values = hiddenStates.flatMap { rowsToChannels($0, length: s) }
        let out = try await c.predict([
            "hidden_states": try c.array("hidden_states", shape: [k, d, 1, s], values),
            "attention_mask": try c.array("attention_mask", shape: [1, s], (0..<s).map { Float($0 < l ? 1 : 0) }),
        ])
        return channelsToRows(try c.output(out, "conditioning"), keep: l)[0]
    }
}

@available(iOS 18.0, macOS 15.0, *)
final class CoreMLDiT: DenoiserRunner, @unchecked Sendable {  // one task at a time
    let c: CoreMLComponent, host: Manifest.HostInputs
    /// The conditioning inputs of the current generation, built at its first step only
    /// (at most two entries, freed with the runner).
    private var contexts: [(conditioning: Tensor, ctx: MLMultiArray, mask: MLMultiArray)] = []
    init(_ c: CoreMLComponent, host: Manifest.HostInputs) { self.c = c; self.host = host }

    func contextInputs(_ conditioning: Tensor) throws -> (MLMultiArray, MLMultiArray) {
        // the pipeline passes the same Tensor every step: == is then a buffer-identity check
        if let hit = contexts.first(where: { $0.conditioning == conditioning }) { return (hit.ctx, hit.mask) }
        let b = conditioning.shape[0], l = conditioning.shape[1]
        let s = try c.length(l, input: "encoder_hidden_states", axis: 3)
        let ctx = try c.array("encoder_hidden_states", shape: [b, conditioning.shape[2], 1, s],
                              conditioning.unstacked().flatMap { rowsToChannels($0, length: s) })
        let mask = try c.array("encoder_attention_mask", shape: [b, s],
                               (0..<b).flatMap { _ in (0..<s).map { Float($0 < l ? 1 : 0) } })
        contexts = Array((contexts + [(conditioning, ctx, mask)]).suffix(2))
        return (ctx, mask)
    }

    func velocity(latents: Tensor, timestep: Double, conditioning: Tensor) async throws -> Tensor {
        let b = latents.shape[0], bundleBatch = try c.input("latent").shape[0]
        if bundleBatch != b {
            if bundleBatch == 1 {  // a batch-1 bundle: one call per item
                var parts = [Tensor]()
                for (x, ctx) in zip(latents.unstacked(), conditioning.unstacked()) {
                    parts.append(try await velocity(latents: Tensor.stack([x]), timestep: timestep,
                                                    conditioning: Tensor.stack([ctx])).unstacked()[0])
                }
                return Tensor.stack(parts)
            }
            guard b < bundleBatch else {
                throw MobileOError(.runner, "the dit bundle takes batch \(bundleBatch); the pipeline passes \(b).")
            }
            // e.g. guidance 1 (one item) on a batch-2 bundle: repeat the last item
            let pad = { (t: Tensor) in Tensor.stack(t.unstacked() + [Tensor](repeating: t.unstacked()[b - 1], count: bundleBatch - b)) }
            let v = try await velocity(latents: pad(latents), timestep: timestep, conditioning: pad(conditioning))
            return Tensor.stack(Array(v.unstacked().prefix(b)))
        }
        let (ctx, mask) = try contextInputs(conditioning)
        let out = try await c.predict([
            "latent": try c.array("latent", shape: latents.shape, latents.data),
            "timestep_features": try c.array("timestep_features", shape: [b, host.timestepChannels, 1, 1],
                                             HostInputs.timestepFeatures([Float](repeating: Float(timestep), count: b),
                                                                         channels: host.timestepChannels,
                                                                         maxPeriod: host.timestepMaxPeriod)),
            "encoder_hidden_states": ctx,
            "encoder_attention_mask": mask,
        ])
        return try c.output(out, "velocity")
    }
}

@available(iOS 18.0, macOS 15.0, *)
final class CoreMLVAE: DecoderRunner, @unchecked Sendable {
    let c: CoreMLComponent
    init(_ c: CoreMLComponent) { self.c = c }

    /// The bundle divides by the scaling factor and maps to [0, 1] itself.
    func decode(_ latents: Tensor) async throws -> Tensor {
        let out = try await c.predict(["latent": try c.array("latent", shape: [1] + latents.shape, latents.data)])
        let image = try c.output(out, "image")
        return try image.reshaped(Array(image.shape.dropFirst()))
    }
}
#endif
