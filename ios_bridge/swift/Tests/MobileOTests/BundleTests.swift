import XCTest
@testable import MobileO

final class BundleTests: XCTestCase {
    func testSHA256KnownAnswers() {
        XCTAssertEqual(SHA256.hex([]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        var s = SHA256()
        for _ in 0..<1000 { s.update([UInt8](repeating: 0x61, count: 1000)) }  // one million 'a'
        XCTAssertEqual(s.finalizeHex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func testExportedFilesMatchTheManifest() throws {
        let dir = try Golden.manifestURL()
        let m = try Manifest.load(from: dir)
        XCTAssertEqual(m.fileProblems(in: dir), [], "Swift hashes equal weights.bundles.hashing's")
    }

    func testTamperedBundleIsNamed() throws {
        let src = try Golden.manifestURL()
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("mobileo-tamper-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: src, to: tmp)
        defer { try? FileManager.default.removeItem(at: tmp) }
        let m = try Manifest.load(from: tmp)
        let bundle = m.components[0].file!
        let target = tmp.appendingPathComponent(bundle).appendingPathComponent("Manifest.json")
        var data = try Data(contentsOf: target)
        data[0] ^= 0x01  // one changed byte, same size
        try data.write(to: target)
        let problems = m.fileProblems(in: tmp)
        XCTAssertEqual(problems.count, 1, "\(problems)")
        XCTAssertTrue(problems[0].hasPrefix(tmp.appendingPathComponent(bundle).path + ": sha256 is"), problems[0])
        XCTAssertEqual(m.fileProblems(in: tmp, hashes: false), [])
    }

    func testHalfConversion() {
        XCTAssertEqual(Half.bits(1), 0x3C00)
        XCTAssertEqual(Half.bits(-2), 0xC000)
        XCTAssertEqual(Half.bits(65504), 0x7BFF)
        XCTAssertEqual(Half.bits(65520), 0x7C00)  // rounds to infinity
        XCTAssertEqual(Half.bits(Float(sign: .plus, exponent: -24, significand: 1)), 0x0001)
        XCTAssertEqual(Half.bits(1 + Float(sign: .plus, exponent: -11, significand: 1)), 0x3C00)  // tie -> even
        XCTAssertEqual(Half.bits(1 + 3 * Float(sign: .plus, exponent: -11, significand: 1)), 0x3C02)
        XCTAssertEqual(Half.bits(0.1), 0x2E66)
        for h in 0..<UInt16.max where (h & 0x7C00) != 0x7C00 || (h & 0x3FF) == 0 {  // every non-NaN half
            XCTAssertEqual(Half.bits(Half.value(h)), h, "round trip of 0x\(String(h, radix: 16))")
        }
        XCTAssertTrue(Half.value(0x7E00).isNaN)
    }
}
