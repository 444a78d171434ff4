import Foundation

/// A dense row-major float tensor: the currency between the pipeline and its runners.
public struct Tensor: Equatable, Sendable {
    /// The sizes of the axes.
    public var shape: [Int]
    /// The values, row-major; `data.count` is the product of `shape`.
    public var data: [Float]

    /// A tensor of `shape` holding `data`; throws `MobileOError` when the sizes disagree.
    public init(shape: [Int], data: [Float]) throws {
        guard shape.allSatisfy({ $0 >= 0 }), shape.reduce(1, *) == data.count else {
            throw MobileOError(.pipeline, "shape \(shape) does not hold \(data.count) values.",
                               fix: "pass as many values as the product of the shape.")
        }
        self.shape = shape
        self.data = data
    }

    /// The package's own constructor, where the sizes are right by construction.
    init(uncheckedShape shape: [Int], data: [Float]) {
        assert(shape.reduce(1, *) == data.count, "shape \(shape) does not hold \(data.count) values")
        self.shape = shape
        self.data = data
    }

    /// A tensor of zeros.
    public init(zeros shape: [Int]) {
        self.init(uncheckedShape: shape, data: [Float](repeating: 0, count: Swift.max(0, shape.reduce(1, *))))
    }

    /// The number of values.
    public var count: Int { data.count }

    /// Rows along the first axis, each as its own tensor.
    public func unstacked() -> [Tensor] {
        guard let n = shape.first, n > 0 else { return [] }
        let rest = Array(shape.dropFirst())
        let step = count / n
        return (0..<n).map { Tensor(uncheckedShape: rest, data: Array(data[$0 * step..<($0 + 1) * step])) }
    }

    /// Stack equal-shaped tensors along a new first axis; throws when `items` is empty or the shapes differ.
    public static func stacking(_ items: [Tensor]) throws -> Tensor {
        guard !items.isEmpty && items.allSatisfy({ $0.shape == items[0].shape }) else {
            throw MobileOError(.pipeline, "stacking needs one or more tensors of equal shapes, got \(items.map(\.shape)).")
        }
        return stack(items)
    }

    /// `stacking` for the package's own calls, where the shapes are equal by construction.
    static func stack(_ items: [Tensor]) -> Tensor {
        assert(!items.isEmpty && items.allSatisfy { $0.shape == items[0].shape }, "stack needs equal shapes")
        return Tensor(uncheckedShape: [items.count] + items[0].shape, data: items.flatMap { $0.data })
    }

    /// Concatenate along the first axis; throws when `items` is empty or the trailing shapes differ.
    public static func concatenate(_ items: [Tensor]) throws -> Tensor {
        guard !items.isEmpty && items.allSatisfy({ Array($0.shape.dropFirst()) == Array(items[0].shape.dropFirst()) }) else {
            throw MobileOError(.pipeline, "concatenate needs one or more tensors of equal trailing shapes, got \(items.map(\.shape)).")
        }
        let n = items.reduce(0) { $0 + ($1.shape.first ?? 0) }
        return Tensor(uncheckedShape: [n] + items[0].shape.dropFirst(), data: items.flatMap { $0.data })
    }

    /// The same values under another shape; throws when the sizes differ.
    public func reshaped(_ newShape: [Int]) throws -> Tensor { try Tensor(shape: newShape, data: data) }

    /// `f` applied to every value.
    public func map(_ f: (Float) -> Float) -> Tensor { Tensor(uncheckedShape: shape, data: data.map(f)) }

    /// max |a - b|, the measure used against the golden vectors; infinity when the shapes differ.
    public func maxAbsDifference(_ other: Tensor) -> Float {
        guard shape == other.shape else { return .infinity }
        return zip(data, other.data).reduce(0) { Swift.max($0, abs($1.0 - $1.1)) }
    }
}

/// A seeded source of standard-normal noise (SplitMix64 + Box-Muller), the same on every
/// platform.  It does not reproduce torch's or MLX's generators: pass initial latents to the
/// pipeline to match a Python run exactly.
public struct GaussianNoise: RandomNumberGenerator, Sendable {
    private var state: UInt64

    /// A generator whose draws depend only on `seed`.
    public init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }

    /// The next 64 random bits (SplitMix64).
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform draw in [0, 1) with 53 random bits.
    public mutating func uniform() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// A tensor of standard-normal draws (Box-Muller).
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
        return Tensor(uncheckedShape: shape, data: Array(out.prefix(n)))
    }
}
