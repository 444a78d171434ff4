// Token-sampling speed: `swift run -c release MobileOBench [tokens]`.
// Prints ms/token for Qwen2's 151,936 logits at top-k 50 (the goal: <= 1 ms in
// release) and for the other filter settings, with a full-sort reference measured in the same
// run for comparison.  Not part of `make test` (a timing, not a check).
import Foundation
import MobileO

let vocab = 151_936
let tokens = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 200 : 200

/// Logits shaped like a language model's: standard normal * 2.5, a few dozen strong candidates.
func makeLogits(_ seed: UInt64) -> [Float] {
    var g = GaussianNoise(seed: seed)
    var l = g.tensor([vocab]).data.map { $0 * 2.5 }
    for k in 0..<40 { l[Int(g.next() % UInt64(vocab))] = 12 + Float(k) * 0.1 }
    return l
}

let inputs = (0..<8).map { makeLogits(UInt64($0)) }

func measure(_ name: String, _ body: ([Float]) -> Int) {
    var sink = 0
    for l in inputs { sink &+= body(l) }  // warm-up
    let start = DispatchTime.now().uptimeNanoseconds
    for i in 0..<tokens { sink &+= body(inputs[i % inputs.count]) }
    let ms = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6 / Double(tokens)
    print(name.padding(toLength: 44, withPad: " ", startingAt: 0) + String(format: "%8.3f ms/token", ms) + "  (\(tokens) tokens, checksum \(sink % 997))")
}

/// The previous implementation's cost: softmax over all, then a full sort for top-k.
func fullSortReference(_ logits: [Float], k: Int) -> Int {
    let m = logits.max() ?? 0
    let probs = logits.map { Foundation.exp(Double($0 - m)) }
    let order = probs.indices.sorted { probs[$0] > probs[$1] }
    return order[min(k, order.count) - 1]
}

print("MobileOBench: token sampling over \(vocab) logits")
var topK50 = try TokenSampler(temperature: 0.7, topK: 50, seed: 1)
measure("top-k 50, temperature 0.7") { topK50.sample($0) }
var topK50P = try TokenSampler(temperature: 0.7, topP: 0.9, topK: 50, seed: 1)
measure("top-k 50 + top-p 0.9, temperature 0.7") { topK50P.sample($0) }
var topP = try TokenSampler(temperature: 0.7, topP: 0.9, seed: 1)
measure("top-p 0.9, temperature 0.7") { topP.sample($0) }
var minP = try TokenSampler(temperature: 0.7, minP: 0.05, seed: 1)
measure("min-p 0.05, temperature 0.7") { minP.sample($0) }
var plain = try TokenSampler(temperature: 0.7, seed: 1)
measure("no filter, temperature 0.7") { plain.sample($0) }
measure("greedy") { TokenSampler.argmax($0) }
measure("reference: softmax + full sort (old top-k)") { fullSortReference($0, k: 50) }
