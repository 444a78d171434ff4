import Foundation

/// A dense row-major float tensor: the currency between the pipeline and its runners.
public struct Tensor: Equatable, Sendable {
    public var shape: [Int]
    public var data: [Float]

    public init(shape: [Int], data: [Float]) {
        precondition(shape.reduce(1, *) == data.count, "shape \(shape) does not hold \(data.count) values")
        self.shape = shape
        self.data = data
    }

    public init(zeros shape: [Int]) {
        self.init(shape: shape, data: [Float](repeating: 0, count: shape.reduce(1, *)))
    }

    public var count: Int { data.count }

    /// Rows along the first axis, each as its own tensor.
    public func unstacked() -> [Tensor] {
        guard let n = shape.first, n > 0 else { return [] }
        let rest = Array(shape.dropFirst())
        let step = count / n
        return (0..<n).map { Tensor(shape: rest, data: Array(data[$0 * step..<($0 + 1) * step])) }
    }

    /// Stack equal-shaped tensors along a new first axis.
    public static func stack(_ items: [Tensor]) -> Tensor {
        precondition(!items.isEmpty && items.allSatisfy { $0.shape == items[0].shape }, "stack needs equal shapes")
        return Tensor(shape: [items.count] + items[0].shape, data: items.flatMap { $0.data })
    }

    /// Concatenate along the first axis.
    public static func concatenate(_ items: [Tensor]) -> Tensor {
        precondition(!items.isEmpty && items.allSatisfy { Array($0.shape.dropFirst()) == Array(items[0].shape.dropFirst()) },
                     "concatenate needs equal trailing shapes")
        let n = items.reduce(0) { $0 + ($1.shape.first ?? 0) }
        return Tensor(shape: [n] + items[0].shape.dropFirst(), data: items.flatMap { $0.data })
    }

    public func reshaped(_ newShape: [Int]) -> Tensor { Tensor(shape: newShape, data: data) }

    public func map(_ f: (Float) -> Float) -> Tensor { Tensor(shape: shape, data: data.map(f)) }

    /// max |a - b|, the measure used against the golden vectors.
    public func maxAbsDifference(_ other: Tensor) -> Float {
        precondition(shape == other.shape, "shapes \(shape) and \(other.shape) differ")
        return zip(data, other.data).reduce(0) { Swift.max($0, abs($1.0 - $1.1)) }
    }
}

/// A seeded source of standard-normal noise (SplitMix64 + Box-Muller), the same on every
/// platform.  It does not reproduce torch's or MLX's generators: pass initial latents to the
/// pipeline to match a Python run exactly.
public struct GaussianNoise: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public mutating func uniform() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    public mutating func tensor(_ shape: [Int]) -> Tensor {
        let n = shape.reduce(1, *)
        var out = [Float]()
        out.reserveCapacity(n + 1)
        while out.count < n {
            let u1 = Swift.max(uniform(), Double.leastNonzeroMagnitude), u2 = uniform()
            let r = (-2 * Foundation.log(u1)).squareRoot()
            out.append(Float(r * Foundation.cos(2 * Double.pi * u2)))
            out.append(Float(r * Foundation.sin(2 * Double.pi * u2)))
        }
        return Tensor(shape: shape, data: Array(out.prefix(n)))
    }
}
