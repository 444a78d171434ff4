import Foundation
@testable import MobileO

// The fake runners of tests/tools/golden.py, re-implemented: closed forms computed in
// Double from Float inputs, returned as Float.  Keep in step with the Python ones.

/// Position values of a prompt: a token id, or image row n.
enum FakeValue { case token(Int), image(Int) }

func fakeValues(_ prompt: [PromptSegment]) -> ([FakeValue], Tensor?) {
    var values = [FakeValue](), image: Tensor?
    for seg in prompt {
        switch seg {
        case .tokens(let ids): values += ids.map { .token($0) }
        case .image(let e): image = e; values += (0..<e.shape[0]).map { .image($0) }
        }
    }
    return (values, image)
}

final class FakeLLM: LanguageModelRunner, @unchecked Sendable {  // one task at a time
    let dim: Int, vocab: Int, eos: Int
    static let eosAfter = 6
    var context = [FakeValue]()
    var generated = 0

    init(dim: Int, vocab: Int, eos: Int) { self.dim = dim; self.vocab = vocab; self.eos = eos }

    /// token: sin(1e-3 id (d+1) + 0.37 (j+1) + 0.01 p); image row n: 0.5 (j+1) emb[n, d] + 0.01 p
    func hiddenStates(_ prompt: [PromptSegment], count: Int) throws -> [Tensor] {
        let (values, image) = fakeValues(prompt)
        return (0..<count).map { j in
            var data = [Float]()
            data.reserveCapacity(values.count * dim)
            for (p, v) in values.enumerated() {
                for d in 0..<dim {
                    switch v {
                    case .token(let id):
                        data.append(Float(Foundation.sin(1e-3 * Double(id) * Double(d + 1) + 0.37 * Double(j + 1) + 0.01 * Double(p))))
                    case .image(let n):
                        data.append(Float(0.5 * Double(j + 1) * Double(image!.data[n * dim + d]) + 0.01 * Double(p)))
                    }
                }
            }
            return Tensor(uncheckedShape: [values.count, dim], data: data)
        }
    }

    func logits() -> [Float] {
        var target = eos
        if generated < Self.eosAfter {
            var s = 0
            for (p, v) in context.enumerated() {
                let x: Int
                switch v { case .token(let id): x = id; case .image: x = 7 }
                s = (s + x * (p + 1)) % 1_000_003
            }
            target = 33 + s % 94
        }
        return (0..<vocab).map { -Float(abs($0 - target)) }
    }

    func prefill(_ prompt: [PromptSegment]) throws -> [Float] {
        context = fakeValues(prompt).0
        generated = 0
        return logits()
    }

    func decode(_ token: Int) throws -> [Float] {
        context.append(.token(token))
        generated += 1
        return logits()
    }
}

/// sum_j (j+1)/K h_j W + b,  W[d, k] = cos(0.1 (d+1)(k+1)) / sqrt(D),  b_k = 0.01 (k+1) - 0.2
final class FakeMCP: ConditioningRunner, @unchecked Sendable {
    let outDim: Int
    init(outDim: Int) { self.outDim = outDim }

    func conditioning(_ hidden: [Tensor]) throws -> Tensor {
        let kN = hidden.count, len = hidden[0].shape[0], dim = hidden[0].shape[1]
        var w = [Double](repeating: 0, count: dim * outDim)
        for d in 0..<dim { for k in 0..<outDim { w[d * outDim + k] = Foundation.cos(0.1 * Double(d + 1) * Double(k + 1)) / Double(dim).squareRoot() } }
        var out = [Float](repeating: 0, count: len * outDim)
        for p in 0..<len {
            for k in 0..<outDim {
                var acc = 0.0
                for (j, h) in hidden.enumerated() {
                    var dot = 0.0
                    for d in 0..<dim { dot += Double(h.data[p * dim + d]) * w[d * outDim + k] }
                    acc += Double(j + 1) / Double(kN) * dot
                }
                out[p * outDim + k] = Float(acc + (0.01 * Double(k + 1) - 0.2))
            }
        }
        return Tensor(uncheckedShape: [len, outDim], data: out)
    }
}

/// per batch item b: -0.6 x_b + 0.2 t / 1000 + mean(context_b)
final class FakeDiT: DenoiserRunner, @unchecked Sendable {
    var calls = 0
    func velocity(latents: Tensor, timestep: Double, conditioning: Tensor) throws -> Tensor {
        calls += 1
        let b = latents.shape[0], per = latents.count / b, cper = conditioning.count / b
        var out = [Float]()
        for i in 0..<b {
            let mean = conditioning.data[i * cper..<(i + 1) * cper].reduce(0.0) { $0 + Double($1) } / Double(cper)
            out += latents.data[i * per..<(i + 1) * per].map { Float(-0.6 * Double($0) + 0.2 * timestep / 1000 + mean) }
        }
        return Tensor(uncheckedShape: latents.shape, data: out)
    }
}

/// The raw fake decoder (wrapped in `ScaledDecoder`, as a real raw VAE would be):
/// [C, h, w] -> [3, 2h, 2w]: tanh(0.8 z[c mod C] (nearest-upsampled) + 0.1 (c+1))
enum FakeVAE {
    static func decode(_ z: Tensor) throws -> Tensor {
        let c = z.shape[0], h = z.shape[1], w = z.shape[2], f = 2
        var out = [Float]()
        for ch in 0..<3 {
            for y in 0..<(h * f) {
                for x in 0..<(w * f) {
                    let v = Double(z.data[(ch % c) * h * w + (y / f) * w + x / f])
                    out.append(Float(Foundation.tanh(0.8 * v + 0.1 * Double(ch + 1))))
                }
            }
        }
        return Tensor(uncheckedShape: [3, h * f, w * f], data: out)
    }
}

/// [3, S, S] -> [N, D]: sin(0.3 (n+1) + 0.05 (d+1)) * mean(pixels)
final class FakeVision: VisionRunner, @unchecked Sendable {
    let tokens: Int, dim: Int
    init(tokens: Int, dim: Int) { self.tokens = tokens; self.dim = dim }

    func imageEmbeddings(_ pixels: Tensor) throws -> Tensor {
        let mean = pixels.data.reduce(0.0) { $0 + Double($1) } / Double(pixels.count)
        var out = [Float]()
        for n in 0..<tokens { for d in 0..<dim { out.append(Float(Foundation.sin(0.3 * Double(n + 1) + 0.05 * Double(d + 1)) * mean)) } }
        return Tensor(uncheckedShape: [tokens, dim], data: out)
    }
}

/// [3, S, S]: ((7c + 3y + 5x) mod 256) / 255
func fakePixels(_ size: Int) -> Tensor {
    var data = [Float]()
    for c in 0..<3 { for y in 0..<size { for x in 0..<size { data.append(Float(Double((7 * c + 3 * y + 5 * x) % 256) / 255)) } } }
    return Tensor(uncheckedShape: [3, size, size], data: data)
}
