// The tokenizer is pluggable: any type conforming to `TextTokenizer` works, e.g. a thin
// wrapper over swift-transformers' `Tokenizer` (add that package to your app, then):
//
//     import Tokenizers
//     final class HubTokenizer: TextTokenizer, @unchecked Sendable {  // Tokenizer is immutable once loaded
//         let inner: Tokenizer
//         init(folder: URL) async throws { inner = try await AutoTokenizer.from(modelFolder: folder) }
//         func encode(_ text: String) throws -> [Int] { inner.encode(text: text, addSpecialTokens: false) }
//         func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String { inner.decode(tokens: ids, skipSpecialTokens: skipSpecialTokens) }
//         func tokenId(_ token: String) -> Int? { inner.convertTokenToId(token) }
//     }
//
// MobileOEngine (and MobileOPipeline) check at start-up that the tokenizer gives every special token the id
// the manifest records.  A tokenizer is `Sendable` (the engine uses it off the caller's
// actor): below, the smallest possible adapter, a cache in front of the built-in tokenizer,
// keeps its mutable state behind a lock.
import Foundation
import MobileO

final class CachingTokenizer: TextTokenizer, @unchecked Sendable {  // `cache` is behind `lock`
    private let inner: any TextTokenizer
    private let lock = NSLock()
    private var cache: [String: [Int]] = [:]

    init(_ inner: any TextTokenizer) { self.inner = inner }

    func encode(_ text: String) throws -> [Int] {
        if let ids = lock.withLock({ cache[text] }) { return ids }
        let ids = try inner.encode(text)
        lock.withLock { cache[text] = ids }
        return ids
    }

    func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String { inner.decode(ids, skipSpecialTokens: skipSpecialTokens) }
    func tokenId(_ token: String) -> Int? { inner.tokenId(token) }
}
