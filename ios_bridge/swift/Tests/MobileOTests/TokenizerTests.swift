import XCTest
@testable import MobileO

struct TokenizerGolden: Decodable {
    struct Case: Decodable { var text: String; var ids: [Int]; var decoded: String }
    var tokenizer: String
    var specialTokens: [String: Int]
    var cases: [Case]
    enum CodingKeys: String, CodingKey { case tokenizer, specialTokens = "special_tokens", cases }
}

final class TokenizerTests: XCTestCase {
    nonisolated(unsafe) static var qwen: BPETokenizer?  // the tests of a class run one after another

    func qwenTokenizer() throws -> BPETokenizer {
        if let t = Self.qwen { return t }
        let start = Date()
        let t = try BPETokenizer(tokenizerJSON: try Golden.dir().appendingPathComponent("qwen/tokenizer.json"))
        print("tokenizer: loaded the real Qwen vocabulary in \(String(format: "%.2f", Date().timeIntervalSince(start))) s")
        Self.qwen = t
        return t
    }

    func testIdsEqualTokenizersLibrary() throws {
        let g = try Golden.load(TokenizerGolden.self, "tokenizer_cases.json")
        let tok = try qwenTokenizer()
        XCTAssertGreaterThan(g.cases.count, 30)
        var failures = 0
        for c in g.cases {
            let ids = try tok.encode(c.text)
            if ids != c.ids {
                failures += 1
                XCTFail("ids differ for \(c.text.debugDescription):\n swift  \(ids)\n python \(c.ids)\n pieces \(QwenPreTokenizer.split(c.text.precomposedStringWithCanonicalMapping))")
            }
            XCTAssertEqual(tok.decode(c.ids, skipSpecialTokens: false), c.decoded, "decode of \(c.text.debugDescription)")
        }
        print("tokenizer: \(g.cases.count - failures)/\(g.cases.count) golden strings identical")
    }

    func testSpecialTokensByName() throws {
        let g = try Golden.load(TokenizerGolden.self, "tokenizer_cases.json")
        let tok = try qwenTokenizer()
        for (name, id) in g.specialTokens { XCTAssertEqual(tok.tokenId(name), id, name) }
    }

    func testPreTokenizerPieces() {
        XCTAssertEqual(QwenPreTokenizer.split("Hello world"), ["Hello", " world"])
        XCTAssertEqual(QwenPreTokenizer.split("a  b"), ["a", " ", " b"])
        XCTAssertEqual(QwenPreTokenizer.split("x\n\n y"), ["x", "\n\n", " y"])
        XCTAssertEqual(QwenPreTokenizer.split("I'm 123"), ["I", "'m", " ", "1", "2", "3"])
        XCTAssertEqual(QwenPreTokenizer.split(" !!?\n"), [" !!?\n"])
    }

    func testRejectsBadFiles() {
        XCTAssertThrowsError(try BPETokenizer(data: Data("{}".utf8))) { e in
            XCTAssertTrue("\(e)".contains("tokenizer.json"), "\(e)")
        }
        XCTAssertThrowsError(try BPETokenizer(tokenizerJSON: URL(fileURLWithPath: "/nonexistent/tokenizer.json"))) { e in
            XCTAssertTrue("\(e)".contains("does not exist"), "\(e)")
        }
    }
}
