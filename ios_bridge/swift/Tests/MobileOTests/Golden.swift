import Foundation
import XCTest
@testable import MobileO

/// The golden vectors written by `python tests/tools/golden.py DIR` (`make swift-test` does
/// it and passes DIR in MOBILEO_GOLDEN_DIR).  Without them the golden tests are skipped
/// (XCTSkip) with the reason and the command that writes them, so Xcode shows no failure.
enum Golden {
    static let envVar = "MOBILEO_GOLDEN_DIR"

    static func dir(file: StaticString = #filePath, line: UInt = #line) throws -> URL {
        guard let path = ProcessInfo.processInfo.environment[envVar], !path.isEmpty else {
            throw XCTSkip("\(envVar) is not set, so the golden-vector tests are skipped: run `make swift-test` from the repository root (it writes them with `python tests/tools/golden.py build/golden` and sets \(envVar)).",
                          file: file, line: line)
        }
        let url = URL(fileURLWithPath: path)
        guard FileManager.default.fileExists(atPath: url.appendingPathComponent("golden.json").path) else {
            throw XCTSkip("\(path) holds no golden vectors (golden.json missing), so this test is skipped: run `make swift-test`.",
                          file: file, line: line)
        }
        return url
    }

    static func load<T: Decodable>(_ type: T.Type, _ name: String, file: StaticString = #filePath,
                                   line: UInt = #line) throws -> T {
        let url = try dir(file: file, line: line).appendingPathComponent(name)
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw XCTSkip("\(url.path) is missing, so this test is skipped: run `make swift-test`.", file: file, line: line)
        }
        return try Manifest.decoder().decode(T.self, from: data)
    }

    static func manifestURL() throws -> URL { try dir().appendingPathComponent("export") }
}

func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "sizes \(a.count) and \(b.count) differ")
    return zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
}
