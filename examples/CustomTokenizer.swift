// The tokenizer is pluggable: any type conforming to `TextTokenizer` works, e.g. a thin
// wrapper over swift-transformers' `Tokenizer` (add that package to your app, then):
//
//     import Tokenizers
//     final class HubTokenizer: TextTokenizer {
//         let inner: Tokenizer
//         init(folder: URL) async throws { inner = try await AutoTokenizer.from(modelFolder: folder) }
//         func encode(_ text: String) throws -> [Int] { inner.encode(text: text, addSpecialTokens: false) }
//         func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String { inner.decode(tokens: ids, skipSpecialTokens: skipSpecialTokens) }
//         func tokenId(_ token: String) -> Int? { inner.convertTokenToId(token) }
//     }
//
// MobileOEngine (and MobileOPipeline) check at start-up that the tokenizer gives every special token the id
// the manifest records.  Below, the smallest possible adapter: a cache in front of the
// built-in tokenizer.
import Foundation
import MobileO

final class CachingTokenizer: TextTokenizer {
    private let inner: TextTokenizer
    private var cache: [String: [Int]] = [:]

    init(_ inner: TextTokenizer) { self.inner = inner }

    func encode(_ text: String) throws -> [Int] {
        if let ids = cache[text] { return ids }
        let ids = try inner.encode(text)
        cache[text] = ids
        return ids
    }

    func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String { inner.decode(ids, skipSpecialTokens: skipSpecialTokens) }
    func tokenId(_ token: String) -> Int? { inner.tokenId(token) }
}
