// A functional stand-in for the Core ML API surface CoreMLRunner.swift uses, so that the real
// runner executes on Linux (Tools/coreml-standin.sh builds Sources/MobileO against it and runs
// Tools/CoreMLStandIn/Tests).  Nothing here is Apple's code or ships in the package.
//
// - MLMultiArray has real storage, shape and strides; `init(shape:dataType:)` is contiguous,
//   and every array a prediction returns has padded strides (the last axis padded to a
//   multiple of 8 elements, rows 64-byte aligned for fp16 as device outputs are), so the
//   runner's stride handling is exercised.
// - MLModel.compileModel(at:) writes a `.mlmodelc` folder naming its source bundle;
//   MLModel.load(contentsOf:configuration:) reads it and keeps `configuration.functionName`.
// - Predictions (async, with or without an MLState) come from a recording that
//   tests/tools/golden.py made by executing the exported bundles' MIL on numpy
//   (coreml_convert/mil_exec.py) for fixed runs: calls.json + arrays.bin in the folder named by
//   MOBILEO_COREML_RECORDING.  Each prediction takes the next recorded call of its
//   (bundle, function), checks that the inputs the runner built have the recorded names,
//   shapes, dtypes and values (fp16 exactly as numpy rounds them), and returns the recorded
//   outputs.  A mismatch throws an error naming the feature.
import Foundation

public enum MLComputeUnits: Sendable { case cpuOnly, cpuAndGPU, all, cpuAndNeuralEngine }

open class MLModelConfiguration {
    public init() {}
    open var computeUnits: MLComputeUnits = .all
    open var functionName: String?
}

/// A model's state (the LLM's KV cache): which model made it, for the stateful-call checks.
open class MLState: @unchecked Sendable {
    let owner: String
    init(owner: String) { self.owner = owner }
}

public protocol MLFeatureProvider { func featureValue(for featureName: String) -> MLFeatureValue? }

public enum MLMultiArrayDataType: Sendable { case double, float64, float32, float, float16, int32, int8 }

func elementSize(_ t: MLMultiArrayDataType) -> Int {
    switch t {
    case .double, .float64: return 8
    case .float32, .float, .int32: return 4
    case .float16: return 2
    case .int8: return 1
    }
}

/// A multiarray with real storage and (possibly padded) strides, in elements.
open class MLMultiArray: @unchecked Sendable {
    public let shapeValues: [Int], stridesValues: [Int], type: MLMultiArrayDataType
    let storage: UnsafeMutableRawBufferPointer

    public convenience init(shape: [NSNumber], dataType: MLMultiArrayDataType) throws {
        let s = shape.map(\.intValue)
        var strides = [Int](repeating: 1, count: s.count)
        for i in stride(from: s.count - 2, through: 0, by: -1) { strides[i] = strides[i + 1] * s[i + 1] }
        self.init(shape: s, strides: strides, dataType: dataType)
    }

    /// An array with the given strides (elements); storage covers the largest offset.
    init(shape: [Int], strides: [Int], dataType: MLMultiArrayDataType) {
        shapeValues = shape; stridesValues = strides; type = dataType
        let span = zip(shape, strides).reduce(1) { $0 + ($1.0 - 1) * $1.1 }
        storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, span) * elementSize(dataType), alignment: 64)
        storage.initializeMemory(as: UInt8.self, repeating: 0xAB)  // padding is garbage, as on devices
    }

    deinit { storage.deallocate() }

    open var shape: [NSNumber] { shapeValues.map { NSNumber(value: $0) } }
    open var strides: [NSNumber] { stridesValues.map { NSNumber(value: $0) } }
    open var dataType: MLMultiArrayDataType { type }
    open var count: Int { shapeValues.reduce(1, *) }

    /// The element at a linear (row-major logical) index, as Core ML's subscript.
    open subscript(idx: Int) -> NSNumber {
        var rest = idx, offset = 0
        for axis in stride(from: shapeValues.count - 1, through: 0, by: -1) {
            offset += (rest % shapeValues[axis]) * stridesValues[axis]
            rest /= shapeValues[axis]
        }
        return NSNumber(value: value(at: offset))
    }

    func value(at offset: Int) -> Float {
        switch type {
        case .float16: return Float(Float16(bitPattern: storage.load(fromByteOffset: offset * 2, as: UInt16.self)))
        case .float32, .float: return storage.load(fromByteOffset: offset * 4, as: Float.self)
        case .double, .float64: return Float(storage.load(fromByteOffset: offset * 8, as: Double.self))
        case .int32: return Float(storage.load(fromByteOffset: offset * 4, as: Int32.self))
        case .int8: return Float(storage.load(fromByteOffset: offset, as: Int8.self))
        }
    }

    func store(_ v: Float, at offset: Int) {
        switch type {
        case .float16: storage.storeBytes(of: Float16(v).bitPattern, toByteOffset: offset * 2, as: UInt16.self)
        case .float32, .float: storage.storeBytes(of: v, toByteOffset: offset * 4, as: Float.self)
        case .double, .float64: storage.storeBytes(of: Double(v), toByteOffset: offset * 8, as: Double.self)
        case .int32: storage.storeBytes(of: Int32(v), toByteOffset: offset * 4, as: Int32.self)
        case .int8: storage.storeBytes(of: Int8(v), toByteOffset: offset, as: Int8.self)
        }
    }

    /// A 2-D array whose rows are padded to `rowLength` elements (tests of stride handling).
    public convenience init(paddedShape shape: [Int], rowLength: Int, dataType: MLMultiArrayDataType, values: [Float]) {
        self.init(shape: shape, strides: [rowLength, 1], dataType: dataType)
        for r in 0..<shape[0] { for c in 0..<shape[1] { store(values[r * shape[1] + c], at: r * rowLength + c) } }
    }

    /// Row-major logical values.
    func values() -> [Float] { (0..<count).map { self[$0].floatValue } }

    public func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer, [Int]) throws -> R) rethrows -> R {
        try body(storage, stridesValues)
    }
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(storage))
    }
}

open class MLFeatureValue {
    let array: MLMultiArray?
    public init(multiArray: MLMultiArray) { array = multiArray }
    open var multiArrayValue: MLMultiArray? { array }
}

open class MLDictionaryFeatureProvider: MLFeatureProvider {
    let values: [String: MLFeatureValue]
    public init(dictionary: [String: Any]) throws {
        var v = [String: MLFeatureValue]()
        for (k, x) in dictionary {
            guard let f = x as? MLFeatureValue else { throw StandInError("feature \(k) is not an MLFeatureValue") }
            v[k] = f
        }
        values = v
    }
    public func featureValue(for featureName: String) -> MLFeatureValue? { values[featureName] }
}

open class MLPredictionOptions { public init() {} }

public struct StandInError: Error, CustomStringConvertible, LocalizedError {
    public var errorDescription: String? { description }
    public let description: String
    init(_ d: String) { description = "Core ML stand-in: " + d }
}

// MARK: - the recording

/// One recorded prediction: its bundle, function, inputs and outputs (offsets into arrays.bin).
struct RecordedArray: Decodable { var shape: [Int]; var dtype: String; var offset: Int }
struct RecordedCall: Decodable {
    var bundle: String
    var function: String?
    var stateful: Bool
    var inputs: [String: RecordedArray]
    var outputs: [String: RecordedArray]
}
struct RecordingFile: Decodable { var calls: [RecordedCall] }

/// The calls of the recording and how far each (bundle, function) has been consumed.
public final class Recording: @unchecked Sendable {
    public static let shared = Recording()
    private let lock = NSLock()
    private var calls: [RecordedCall] = []
    private var data = Data()
    private var used = Set<Int>()
    private var loaded = false

    func load() throws {
        try lock.withLock {
            if loaded { return }
            guard let dir = ProcessInfo.processInfo.environment["MOBILEO_COREML_RECORDING"] else {
                throw StandInError("MOBILEO_COREML_RECORDING is not set")
            }
            let url = URL(fileURLWithPath: dir)
            calls = try JSONDecoder().decode(RecordingFile.self, from: Data(contentsOf: url.appendingPathComponent("calls.json"))).calls
            data = try Data(contentsOf: url.appendingPathComponent("arrays.bin"))
            loaded = true
        }
    }

    /// Calls not consumed yet (a test checks it is 0 after its runs).
    public var remaining: Int { lock.withLock { calls.count - used.count } }

    /// Forget what was consumed (each test replays from the start).
    public func rewind() { lock.withLock { used = [] } }

    func values(_ a: RecordedArray) -> [Float] {
        let n = a.shape.reduce(1, *)
        return data.withUnsafeBytes { raw in (0..<n).map { raw.loadUnaligned(fromByteOffset: a.offset + $0 * 4, as: Float.self) } }
    }

    func next(bundle: String, function: String?) throws -> RecordedCall {
        try lock.withLock {
            guard let i = calls.indices.first(where: { !used.contains($0) && calls[$0].bundle == bundle && calls[$0].function == function }) else {
                throw StandInError("no recorded call left for \(bundle) function \(function ?? "main")")
            }
            used.insert(i)
            return calls[i]
        }
    }
}

// MARK: - the model

open class MLModel: @unchecked Sendable {
    let bundle: String, function: String?
    private static let counter = NSLock()
    nonisolated(unsafe) private static var compiles = 0
    /// How many times `compileModel(at:)` ran (the compile-cache test counts them).
    public static var compileCount: Int { counter.withLock { compiles } }
    nonisolated(unsafe) private static var loads: [String] = []
    /// "bundle function" of every model loaded, in order (the per-task loading test reads it).
    public static var loaded: [String] { counter.withLock { loads } }

    init(bundle: String, function: String?) { self.bundle = bundle; self.function = function }

    public convenience init(contentsOf url: URL, configuration: MLModelConfiguration) throws {
        self.init(bundle: try Self.source(url), function: configuration.functionName)
    }

    static func source(_ compiled: URL) throws -> String {
        let marker = compiled.appendingPathComponent("source.txt")
        guard let s = try? String(contentsOf: marker, encoding: .utf8) else {
            throw StandInError("\(compiled.path) is not a compiled model (no source.txt)")
        }
        return s
    }

    open class func load(contentsOf url: URL, configuration: MLModelConfiguration = MLModelConfiguration()) async throws -> MLModel {
        try Recording.shared.load()
        let model = try MLModel(contentsOf: url, configuration: configuration)
        counter.withLock { loads.append("\(model.bundle) \(model.function ?? "main")") }
        return model
    }

    /// A temporary `.mlmodelc` folder naming its source bundle (Core ML's compiler writes one too).
    open class func compileModel(at modelURL: URL) async throws -> URL {
        guard FileManager.default.fileExists(atPath: modelURL.path) else { throw StandInError("\(modelURL.path) does not exist") }
        counter.withLock { compiles += 1 }
        try await Task.sleep(nanoseconds: 20_000_000)  // compiling takes a while: concurrent loaders overlap
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("\(UUID().uuidString).mlmodelc")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        try modelURL.lastPathComponent.write(to: out.appendingPathComponent("source.txt"), atomically: true, encoding: .utf8)
        return out
    }

    open func prediction(from input: MLFeatureProvider, options: MLPredictionOptions) async throws -> MLFeatureProvider {
        try await predict(input, state: nil)
    }

    open func prediction(from input: MLFeatureProvider, using state: MLState, options: MLPredictionOptions) async throws -> MLFeatureProvider {
        try await predict(input, state: state)
    }

    open func makeState() -> MLState { MLState(owner: bundle) }

    func predict(_ input: MLFeatureProvider, state: MLState?) async throws -> MLFeatureProvider {
        try Task.checkCancellation()
        let call = try Recording.shared.next(bundle: bundle, function: function)
        let what = "\(bundle) \(function ?? "main")"
        guard call.stateful == (state != nil) else {
            throw StandInError("\(what): the recorded call is \(call.stateful ? "" : "not ")stateful but the runner passed \(state == nil ? "no" : "a") state")
        }
        if let state, state.owner != bundle { throw StandInError("\(what): a state of \(state.owner)") }
        guard let provided = input as? MLDictionaryFeatureProvider, Set(provided.values.keys) == Set(call.inputs.keys) else {
            throw StandInError("\(what): inputs differ from the recorded \(call.inputs.keys.sorted())")
        }
        for (name, rec) in call.inputs {
            guard let a = provided.values[name]?.multiArrayValue else { throw StandInError("\(what): \(name) is not a multiarray") }
            guard a.shapeValues == rec.shape else { throw StandInError("\(what): \(name) has shape \(a.shapeValues), recorded \(rec.shape)") }
            let expected: MLMultiArrayDataType = rec.dtype == "float16" ? .float16 : (rec.dtype == "int32" ? .int32 : .float32)
            guard a.type == expected else { throw StandInError("\(what): \(name) is \(a.type), recorded \(rec.dtype)") }
            let got = a.values(), want = Recording.shared.values(rec)
            let diff = zip(got, want).map { abs($0 - $1) }.max() ?? 0
            guard diff <= 1e-3 * max(1, want.map(abs).max() ?? 1) else {
                throw StandInError("\(what): input \(name) differs from the recording by \(diff)")
            }
        }
        var out = [String: Any]()
        for (name, rec) in call.outputs {
            let type: MLMultiArrayDataType = rec.dtype == "float16" ? .float16 : .float32
            // padded strides: the last axis padded to a multiple of 8 elements
            var strides = [Int](repeating: 1, count: rec.shape.count)
            if rec.shape.count >= 2 {
                strides[rec.shape.count - 2] = (rec.shape.last! + 7) / 8 * 8
                for i in stride(from: rec.shape.count - 3, through: 0, by: -1) { strides[i] = strides[i + 1] * rec.shape[i + 1] }
            }
            let a = MLMultiArray(shape: rec.shape, strides: strides, dataType: type)
            let values = Recording.shared.values(rec)
            for i in 0..<values.count {
                var rest = i, offset = 0
                for axis in stride(from: rec.shape.count - 1, through: 0, by: -1) {
                    offset += (rest % rec.shape[axis]) * strides[axis]; rest /= rec.shape[axis]
                }
                a.store(values[i], at: offset)
            }
            out[name] = MLFeatureValue(multiArray: a)
        }
        return try MLDictionaryFeatureProvider(dictionary: out)
    }
}
