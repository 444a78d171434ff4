// Linux type-check stub of the CoreML API surface MobileO uses (signatures as in the iOS 18 /
// macOS 15 SDK).  Tools/typecheck-coreml.sh compiles Sources/MobileO against it, so the
// `#if canImport(CoreML)` runner is at least type-checked where Core ML does not exist.
// Nothing here runs; keep it in step with the APIs CoreMLRunner.swift calls.
import Foundation
#if canImport(ObjectiveC)
@_exported import ObjectiveC  // as the real CoreML (via Foundation): autoreleasepool
#endif
public enum MLComputeUnits { case cpuOnly, cpuAndGPU, all, cpuAndNeuralEngine }
open class MLModelConfiguration { public init() {}; open var computeUnits: MLComputeUnits = .all; open var functionName: String? }
open class MLState {}
public protocol MLFeatureProvider { func featureValue(for featureName: String) -> MLFeatureValue? }
open class MLMultiArray {
  public init(shape: [NSNumber], dataType: MLMultiArrayDataType) throws { fatalError() }
  open var shape: [NSNumber] { [] }
  open var strides: [NSNumber] { [] }
  open var dataType: MLMultiArrayDataType { .float32 }
  open subscript(idx: Int) -> NSNumber { 0 }
  public func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer, [Int]) throws -> R) rethrows -> R { fatalError() }
  public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R { fatalError() }
}
public enum MLMultiArrayDataType { case double, float64, float32, float, float16, int32, int8 }
open class MLFeatureValue { public init(multiArray: MLMultiArray) {}; open var multiArrayValue: MLMultiArray? { nil } }
open class MLDictionaryFeatureProvider: MLFeatureProvider {
  public init(dictionary: [String: Any]) throws {}
  public func featureValue(for featureName: String) -> MLFeatureValue? { nil }
}
open class MLModel {
  public init(contentsOf url: URL, configuration: MLModelConfiguration) throws {}
  open class func load(contentsOf url: URL, configuration: MLModelConfiguration = MLModelConfiguration()) async throws -> MLModel { fatalError() }
  open class func compileModel(at modelURL: URL) async throws -> URL { modelURL }
  open func prediction(from input: MLFeatureProvider) throws -> MLFeatureProvider { fatalError() }
  open func prediction(from input: MLFeatureProvider, using state: MLState) throws -> MLFeatureProvider { fatalError() }
  open func makeState() -> MLState { MLState() }
}
