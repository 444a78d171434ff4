import XCTest
@testable import MobileO

/// tests/tools/golden.py's token_sampling.json: mlx-lm's own filters (make_sampler's order:
/// top-p, min-p, top-k on the log-probabilities at temperature 1) and fixed uniform draws.
struct TokenSamplingGolden: Decodable {
    struct Case: Decodable {
        var vector: Int, temperature: Double, topP: Double, topK: Int, minP: Double
        var kept: [Int], uniforms: [Double], tokens: [Int]
        enum CodingKeys: String, CodingKey {
            case vector, temperature, topP = "top_p", topK = "top_k", minP = "min_p", kept, uniforms, tokens
        }
    }
    var vectors: [[Float]]
    var cases: [Case]
}

final class TokenSamplingTests: XCTestCase {
    func testSampledDecodingMatchesMlxLmWithFixedDraws() throws {
        let g = try Golden.load(TokenSamplingGolden.self, "token_sampling.json")
        XCTAssertGreaterThanOrEqual(g.cases.count, 20)
        for c in g.cases {
            let what = "vector \(c.vector) T \(c.temperature) top-p \(c.topP) top-k \(c.topK) min-p \(c.minP)"
            let logits = g.vectors[c.vector]
            let s = try TokenSampler(temperature: c.temperature, topP: c.topP, topK: c.topK, minP: c.minP)
            let filtered = c.topK > 0 || c.topP < 1 || c.minP > 0
            XCTAssertEqual(filtered ? s.candidates(logits).sorted() : Array(logits.indices), c.kept, "kept tokens, \(what)")
            XCTAssertEqual(c.uniforms.map { s.sample(logits, uniform: $0) }, c.tokens, "draws, \(what)")
        }
    }

    func testLargestIsAPartialSelection() {
        let l: [Float] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, .nan, 9]
        XCTAssertEqual(TokenSampler.largest(l, 4), [5, 12, 7, 4], "descending, ties by lower index, NaN skipped")
        XCTAssertEqual(TokenSampler.largest(l, 1), [5])
        XCTAssertEqual(TokenSampler.largest(l, 50).count, 12)
        var g = GaussianNoise(seed: 9)
        let big = g.tensor([5000]).data
        let reference = big.indices.sorted { big[$0] > big[$1] || (big[$0] == big[$1] && $0 < $1) }
        XCTAssertEqual(TokenSampler.largest(big, 50), Array(reference.prefix(50)))
    }

    func testOptionsAreCheckedByAThrowingInitialiser() {
        XCTAssertThrowsError(try TokenSampler(temperature: -1))
        XCTAssertThrowsError(try TokenSampler(temperature: 1, topP: 0))
        XCTAssertThrowsError(try TokenSampler(temperature: 1, topK: -1))
        XCTAssertThrowsError(try TokenSampler(temperature: 1, minP: 1))
    }
}
