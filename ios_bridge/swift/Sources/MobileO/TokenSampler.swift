import Foundation

/// Next-token choice, in the order of mlx-lm's `make_sampler` (which mlx_model's understanding
/// and chat use):
///
/// 1. temperature 0: greedy (the first index of the largest logit);
/// 2. otherwise the filters run on the log-probabilities at temperature 1, in this order:
///    **top-p** (keep a token when the probability mass of the tokens above it is < `topP`),
///    then **min-p** (keep a token when its probability is >= `minP` x the top one's),
///    then **top-k** (keep the `topK` most likely of what is left);
/// 3. the token is drawn from softmax(kept logits / temperature).
///
/// Every filter keeps a prefix of the tokens ordered by logit, so the sampler never sorts the
/// vocabulary: with top-k on it selects the k largest logits in one pass (a k-entry heap) and
/// runs top-p and min-p over those; without top-k it selects a growing prefix until the
/// filters end inside it.  Ties at the top-k boundary keep the lower token id.
///
/// The draw: one uniform u in [0, 1) from the seeded generator (or passed to
/// `sample(_:uniform:)`), then the first kept token, in ascending token id order, whose
/// cumulative weight exceeds u x the total weight (inverse CDF).  Python's golden vectors
/// (tests/tools/golden.py) apply mlx-lm's own filter functions and the same draw.
public struct TokenSampler: Sendable {
    /// Sampling temperature; 0 = greedy.
    public let temperature: Double
    /// Nucleus filter in (0, 1]; 1 = off.
    public let topP: Double
    /// Keep the k most likely tokens; 0 = off.
    public let topK: Int
    /// Keep tokens with probability >= minP x the top one's, in [0, 1); 0 = off.
    public let minP: Double
    private var rng: GaussianNoise

    /// A sampler; throws `MobileOError` when an option is out of range.
    public init(temperature: Double, topP: Double = 1, topK: Int = 0, minP: Double = 0, seed: UInt64 = 0) throws {
        guard temperature >= 0, temperature.isFinite else {
            throw MobileOError(.sampler, "temperature must be >= 0, got \(temperature).", fix: "use 0 for greedy decoding.")
        }
        guard topP > 0 && topP <= 1 else { throw MobileOError(.sampler, "topP must be in (0, 1], got \(topP).", fix: "use 1 to turn it off.") }
        guard topK >= 0 else { throw MobileOError(.sampler, "topK must be >= 0, got \(topK).", fix: "use 0 to turn it off.") }
        guard minP >= 0 && minP < 1 else { throw MobileOError(.sampler, "minP must be in [0, 1), got \(minP).", fix: "use 0 to turn it off.") }
        self.temperature = temperature; self.topP = topP; self.topK = topK; self.minP = minP
        rng = GaussianNoise(seed: seed)
    }

    /// The next token for `logits` [V], drawing from the seeded generator.
    public mutating func sample(_ logits: [Float]) -> Int {
        guard temperature > 0 else { return Self.argmax(logits) }
        return sample(logits, uniform: rng.uniform())
    }

    /// The next token for `logits` [V] with the uniform draw `u` in [0, 1) given.
    public func sample(_ logits: [Float], uniform u: Double) -> Int {
        guard temperature > 0 else { return Self.argmax(logits) }
        guard !logits.isEmpty else { return 0 }
        // no filter: every token is a candidate; else the filters' prefix (most likely first)
        let filtered = topK > 0 || topP < 1 || minP > 0
        let kept = filtered ? candidates(logits) : []
        let m = Double(logits[filtered ? kept[0] : Self.argmax(logits)])
        let ids = filtered ? kept.sorted() : Array(logits.indices)  // draw in token id order
        var weights = [Double](repeating: 0, count: ids.count), total = 0.0
        for (j, i) in ids.enumerated() {
            weights[j] = Foundation.exp((Double(logits[i]) - m) / temperature)
            total += weights[j]
        }
        let target = u * total
        var cum = 0.0
        for (j, i) in ids.enumerated() {
            cum += weights[j]
            if cum > target { return i }
        }
        return ids.last ?? 0
    }

    /// The tokens the filters keep (top-p, then min-p, then top-k), most likely first.
    public func candidates(_ logits: [Float]) -> [Int] {
        let n = logits.count
        guard n > 0 else { return [] }
        let limitK = topK > 0 ? min(topK, n) : n
        var size = topK > 0 ? limitK : min(n, 256)
        var order = Self.largest(logits, size)  // descending, ties by lower index
        guard let first = order.first else { return [] }
        let m = Double(logits[first])
        // top-p needs the total mass (Σ exp(l - max) over the vocabulary) only when it is on
        let total = topP < 1 ? Self.mass(logits, max: Float(m)) : 0
        let minLogit = minP > 0 ? m + Foundation.log(minP) : -Double.infinity
        while true {
            var keep = min(order.count, limitK)
            if minP > 0, let cut = order.firstIndex(where: { Double(logits[$0]) < minLogit }) { keep = min(keep, cut) }
            if topP < 1 {
                var before = 0.0
                for (r, i) in order.prefix(keep).enumerated() {
                    if before >= topP * total {
                        // ties with the last kept token stay in (mlx-lm keeps logprob >= threshold)
                        var end = r
                        while end < keep && logits[order[end]] == logits[order[r - 1]] { end += 1 }
                        keep = end
                        break
                    }
                    before += Foundation.exp(Double(logits[i]) - m)
                }
            }
            // done when the filters ended inside the selection, or it is the whole limit
            if keep < order.count || order.count >= limitK || order.count == n { return Array(order.prefix(max(1, keep))) }
            size = min(n, size * 4)
            order = Self.largest(logits, size)
        }
    }

    /// Σ exp(l - max) over all logits.
    static func mass(_ logits: [Float], max m: Float) -> Double {
        var total: Float = 0, block: Float = 0
        logits.withUnsafeBufferPointer { p in
            for (j, l) in p.enumerated() {
                block += expf(l - m)
                if j & 1023 == 1023 { total += block; block = 0 }
            }
        }
        return Double(total + block)
    }

    /// Indices of the `k` largest logits, largest first (ties: lower index first), by one pass
    /// over a k-entry min-heap; O(V log k), no sort of the vocabulary.
    static func largest(_ logits: [Float], _ k: Int) -> [Int] {
        let n = logits.count, k = min(k, n)
        guard k > 0 else { return [] }
        // heap of (value, index): the root is the smallest kept, "smaller" = lower value or higher index
        var hv = [Float](repeating: 0, count: k), hi = [Int](repeating: 0, count: k)
        @inline(__always) func less(_ v1: Float, _ i1: Int, _ v2: Float, _ i2: Int) -> Bool {
            v1 < v2 || (v1 == v2 && i1 > i2)
        }
        logits.withUnsafeBufferPointer { p in
            var count = 0
            var rootV = -Float.infinity  // the smallest kept value once the heap is full
            for i in 0..<n {
                let v = p[i]
                // a later index never beats an equal value: reject at <= (NaN fails every test)
                if count == k && !(v > rootV) { continue }
                if v.isNaN { continue }
                if count < k {
                    var c = count; count += 1
                    hv[c] = v; hi[c] = i
                    while c > 0 {  // sift up
                        let parent = (c - 1) / 2
                        if less(hv[c], hi[c], hv[parent], hi[parent]) { hv.swapAt(c, parent); hi.swapAt(c, parent); c = parent } else { break }
                    }
                    if count == k { rootV = hv[0] }
                } else if less(hv[0], hi[0], v, i) {
                    hv[0] = v; hi[0] = i
                    var c = 0
                    while true {  // sift down
                        let l = 2 * c + 1, r = l + 1
                        var s = c
                        if l < k && less(hv[l], hi[l], hv[s], hi[s]) { s = l }
                        if r < k && less(hv[r], hi[r], hv[s], hi[s]) { s = r }
                        if s == c { break }
                        hv.swapAt(c, s); hi.swapAt(c, s); c = s
                    }
                    rootV = hv[0]
                }
            }
            if count < k { hv.removeLast(k - count); hi.removeLast(k - count) }
        }
        return zip(hv, hi).sorted { less($1.0, $1.1, $0.0, $0.1) }.map(\.1)
    }

    /// First index of the largest logit (as numpy/MLX argmax).
    public static func argmax(_ logits: [Float]) -> Int {
        var best = 0
        for i in logits.indices where logits[i] > logits[best] { best = i }
        return best
    }
}
