import Foundation

/// What the pipeline needs from a tokenizer.  `BPETokenizer` implements it from
/// tokenizer.json with no dependencies; an app may plug in another implementation
/// (e.g. swift-transformers' `Tokenizer`) by conforming a small wrapper.
/// It is `Sendable`: the engine encodes off the caller's actor and counts tokens from any thread.
public protocol TextTokenizer: AnyObject, Sendable {
    /// Token ids of `text`; special tokens written in the text (e.g. `<|im_start|>`) map to their ids.
    func encode(_ text: String) throws -> [Int]
    /// The text of `ids`; with `skipSpecialTokens` special tokens are left out.
    func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String
    /// Id of a token by its exact text (special tokens by name), nil when unknown.
    func tokenId(_ token: String) -> Int?
}

/// Qwen2's tokenizer from its `tokenizer.json`: special tokens split first, NFC, the
/// Qwen2 split pattern, then byte-level BPE with merge ranks — the same ids as the
/// `tokenizers` library.
public final class BPETokenizer: TextTokenizer, @unchecked Sendable {  // the cache is behind `lock`
    /// The Qwen2 split pattern this class implements by hand (see `QwenPreTokenizer`).
    public static let qwen2Pattern =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    private let vocab: [String: Int]
    private let idToToken: [Int: String]
    private let merges: [UInt64: (rank: Int, id: Int)]
    private let byteIds: [Int]                    // byte -> id of its one-byte token
    private let specials: [(content: String, id: Int, special: Bool)]  // longest first
    private let specialIds: Set<Int>
    private let normalizeNFC: Bool
    private var cache: [String: [Int]] = [:]
    private let lock = NSLock()

    /// Load `tokenizer.json` (tokenizers' format, merges as "a b" strings or [a, b] pairs).
    public convenience init(tokenizerJSON url: URL) throws {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw MobileOError(.tokenizer, "\(url.path) does not exist or cannot be read.",
                               fix: "add the tokenizer folder from the export (see manifest.json pipeline.tokenizer.files).")
        }
        try self.init(data: data, source: url.path)
    }

    /// Parse tokenizer.json's bytes; `source` names it in errors.
    public init(data: Data, source: String = "tokenizer.json") throws {
        let file: TokenizerFile
        do {
            file = try JSONDecoder().decode(TokenizerFile.self, from: data)
        } catch {
            throw MobileOError(.tokenizer, "\(source) is not a tokenizers-format tokenizer.json (\(error)).",
                               fix: "use the tokenizer.json exported beside manifest.json.")
        }
        guard file.model.type == "BPE" else {
            throw MobileOError(.tokenizer, "\(source): model type '\(file.model.type)' is not BPE.")
        }
        if let pre = file.preTokenizer, !pre.describesQwen2 {
            throw MobileOError(.tokenizer, "\(source): pre_tokenizer is not Qwen2's split + ByteLevel; this tokenizer implements only that one.",
                               fix: "plug in another TextTokenizer (e.g. swift-transformers) for other vocabularies.")
        }
        if let norm = file.normalizer, norm.type != "NFC" {
            throw MobileOError(.tokenizer, "\(source): normalizer '\(norm.type)' is not supported (only NFC or none).")
        }
        normalizeNFC = file.normalizer?.type == "NFC"
        var vocab = file.model.vocab
        var specials: [(String, Int, Bool)] = []
        for t in file.addedTokens ?? [] {
            vocab[t.content] = t.id
            specials.append((t.content, t.id, t.special))
        }
        self.vocab = vocab
        var inverse = [Int: String](minimumCapacity: vocab.count)
        for (tok, id) in vocab { inverse[id] = tok }
        idToToken = inverse
        self.specials = specials.sorted { $0.0.unicodeScalars.count > $1.0.unicodeScalars.count }
        specialIds = Set(specials.filter { $0.2 }.map { $0.1 })
        var byteIds = [Int]()
        for b in 0..<256 {
            guard let id = file.model.vocab[ByteLevel.encoder[b]] else {
                throw MobileOError(.tokenizer, "\(source): the vocabulary lacks the byte token for 0x\(String(b, radix: 16)); not a byte-level BPE.")
            }
            byteIds.append(id)
        }
        self.byteIds = byteIds
        var merges = [UInt64: (rank: Int, id: Int)](minimumCapacity: file.model.merges.count)
        for (rank, pair) in file.model.merges.enumerated() {
            guard let a = file.model.vocab[pair.0], let b = file.model.vocab[pair.1],
                  let m = file.model.vocab[pair.0 + pair.1] else {
                throw MobileOError(.tokenizer, "\(source): merge #\(rank) '\(pair.0) \(pair.1)' uses tokens missing from the vocabulary.")
            }
            let key = UInt64(a) << 32 | UInt64(b)
            if merges[key] == nil { merges[key] = (rank, m) }
        }
        self.merges = merges
    }

    /// The id of a token by its exact text (special tokens by name).
    public func tokenId(_ token: String) -> Int? { vocab[token] }

    /// One more than the largest id.
    public var vocabularySize: Int { (idToToken.keys.max() ?? -1) + 1 }

    /// The ids of `text`, as the `tokenizers` library gives them.
    public func encode(_ text: String) throws -> [Int] {
        var ids = [Int]()
        for segment in splitSpecials(text) {
            switch segment {
            case .special(let id): ids.append(id)
            case .text(let t):
                let normalized = normalizeNFC ? t.precomposedStringWithCanonicalMapping : t
                for piece in QwenPreTokenizer.split(normalized) { ids += bpe(piece) }
            }
        }
        return ids
    }

    /// The text of `ids` (invalid UTF-8 as U+FFFD); special tokens left out when asked.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        var bytes = [UInt8]()
        for id in ids {
            if skipSpecialTokens && specialIds.contains(id) { continue }
            guard let tok = idToToken[id] else { continue }
            if let b = ByteLevel.decode(tok) { bytes += b } else { bytes += Array(tok.utf8) }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: - internals

    enum Segment { case text(String), special(Int) }

    /// Added tokens split first, leftmost-longest, on the raw text.
    func splitSpecials(_ text: String) -> [Segment] {
        guard !specials.isEmpty else { return [.text(text)] }
        let scalars = Array(text.unicodeScalars)
        let patterns = specials.map { (Array($0.content.unicodeScalars), $0.id) }
        var out = [Segment](), start = 0, i = 0
        func flush(_ end: Int) {
            if end > start {
                var s = String.UnicodeScalarView(); s.append(contentsOf: scalars[start..<end])
                out.append(.text(String(s)))
            }
        }
        while i < scalars.count {
            var matched: (Int, Int)?
            for (p, id) in patterns where p.count <= scalars.count - i && p.first == scalars[i] {
                if scalars[i..<i + p.count].elementsEqual(p) { matched = (p.count, id); break }  // longest first
            }
            if let (len, id) = matched {
                flush(i); out.append(.special(id)); i += len; start = i
            } else {
                i += 1
            }
        }
        flush(scalars.count)
        return out
    }

    private func bpe(_ piece: String) -> [Int] {
        lock.lock(); defer { lock.unlock() }
        if let hit = cache[piece] { return hit }
        var symbols = piece.utf8.map { byteIds[Int($0)] }
        while symbols.count > 1 {
            var best: (rank: Int, pos: Int, id: Int)?
            for p in 0..<(symbols.count - 1) {
                if let m = merges[UInt64(symbols[p]) << 32 | UInt64(symbols[p + 1])], m.rank < (best?.rank ?? Int.max) {
                    best = (m.rank, p, m.id)
                }
            }
            guard let b = best else { break }
            symbols[b.pos] = b.id
            symbols.remove(at: b.pos + 1)
        }
        if cache.count > 50_000 { cache.removeAll(keepingCapacity: true) }
        cache[piece] = symbols
        return symbols
    }
}

/// GPT-2's reversible byte <-> printable-character map used by byte-level BPE.
enum ByteLevel {
    static let encoder: [String] = {
        let keep = Set(Array(33...126) + Array(161...172) + Array(174...255))
        var n = 0
        return (0..<256).map { b -> String in
            if keep.contains(b) { return String(UnicodeScalar(UInt8(b))) }
            defer { n += 1 }
            return String(UnicodeScalar(UInt32(256 + n))!)
        }
    }()

    static let decoder: [Unicode.Scalar: UInt8] = {
        var d = [Unicode.Scalar: UInt8]()
        for (b, s) in encoder.enumerated() { d[s.unicodeScalars.first!] = UInt8(b) }
        return d
    }()

    /// The bytes of a byte-level token, or nil when a character is outside the map.
    static func decode(_ token: String) -> [UInt8]? {
        var out = [UInt8]()
        for s in token.unicodeScalars {
            guard let b = decoder[s] else { return nil }
            out.append(b)
        }
        return out
    }
}

/// Qwen2's split pattern (`BPETokenizer.qwen2Pattern`), matched by hand on Unicode
/// scalars so it behaves the same on every platform:
///   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N} | ' '?[^\s\p{L}\p{N}]+[\r\n]*
///   | \s*[\r\n]+ | \s+(?!\S) | \s+
/// Alternatives are tried in order at each position (leftmost-first, like Oniguruma).
public enum QwenPreTokenizer {
    static func isLetter(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }

    static func isNumber(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    static func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace }
    static func isNewline(_ c: Unicode.Scalar) -> Bool { c == "\r" || c == "\n" }
    static func isOther(_ c: Unicode.Scalar) -> Bool { !isSpace(c) && !isLetter(c) && !isNumber(c) }

    /// The pieces of `text`, in order; their concatenation is `text`.
    public static func split(_ text: String) -> [String] {
        let s = Array(text.unicodeScalars)
        var pieces = [String](), i = 0
        while i < s.count {
            let end = contraction(s, i) ?? letters(s, i) ?? number(s, i) ?? punctuation(s, i)
                ?? newlines(s, i) ?? trailingSpaces(s, i) ?? spaces(s, i) ?? (i + 1)
            var v = String.UnicodeScalarView(); v.append(contentsOf: s[i..<end])
            pieces.append(String(v))
            i = end
        }
        return pieces
    }

    static func contraction(_ s: [Unicode.Scalar], _ i: Int) -> Int? {
        guard s[i] == "'", i + 1 < s.count else { return nil }
        func lower(_ k: Int) -> Character? {
            guard k < s.count else { return nil }
            if s[k] == "\u{017F}" { return "s" }  // LATIN SMALL LETTER LONG S case-folds to s
            return s[k].isASCII ? Character(String(s[k]).lowercased()) : nil
        }
        switch lower(i + 1) {
        case "s", "t", "m", "d": return i + 2
        case "r" where lower(i + 2) == "e": return i + 3
        case "v" where lower(i + 2) == "e": return i + 3
        case "l" where lower(i + 2) == "l": return i + 3
        default: return nil
        }
    }

    static func letters(_ s: [Unicode.Scalar], _ i: Int) -> Int? {
        var j = i
        if !isLetter(s[i]) {
            guard !isNewline(s[i]), !isNumber(s[i]), i + 1 < s.count, isLetter(s[i + 1]) else { return nil }
            j = i + 1
        }
        while j < s.count && isLetter(s[j]) { j += 1 }
        return j
    }

    static func number(_ s: [Unicode.Scalar], _ i: Int) -> Int? { isNumber(s[i]) ? i + 1 : nil }

    static func punctuation(_ s: [Unicode.Scalar], _ i: Int) -> Int? {
        var j = i
        if s[j] == " ", j + 1 < s.count, isOther(s[j + 1]) { j += 1 }
        guard isOther(s[j]) else { return nil }
        while j < s.count && isOther(s[j]) { j += 1 }
        while j < s.count && isNewline(s[j]) { j += 1 }
        return j
    }

    static func spaceRun(_ s: [Unicode.Scalar], _ i: Int) -> Int {
        var j = i
        while j < s.count && isSpace(s[j]) { j += 1 }
        return j
    }

    static func newlines(_ s: [Unicode.Scalar], _ i: Int) -> Int? {
        let j = spaceRun(s, i)
        guard let last = (i..<j).last(where: { isNewline(s[$0]) }) else { return nil }
        return last + 1
    }

    static func trailingSpaces(_ s: [Unicode.Scalar], _ i: Int) -> Int? {
        let j = spaceRun(s, i)
        if j == i { return nil }
        if j == s.count { return j }
        return j - 1 > i ? j - 1 : nil
    }

    static func spaces(_ s: [Unicode.Scalar], _ i: Int) -> Int? {
        let j = spaceRun(s, i)
        return j > i ? j : nil
    }
}

// MARK: - tokenizer.json

struct TokenizerFile: Decodable {
    struct Added: Decodable { var id: Int; var content: String; var special: Bool }
    struct Normalizer: Decodable { var type: String }
    struct PreTokenizer: Decodable {
        var type: String
        var pattern: Pattern?
        var pretokenizers: [PreTokenizer]?
        struct Pattern: Decodable { var Regex: String?; var String: String? }

        var describesQwen2: Bool {
            guard type == "Sequence", let parts = pretokenizers, parts.count == 2 else { return false }
            return parts[0].type == "Split" && parts[0].pattern?.Regex == BPETokenizer.qwen2Pattern
                && parts[1].type == "ByteLevel"
        }
    }
    struct Model: Decodable {
        var type: String
        var vocab: [String: Int]
        var merges: [(String, String)]

        enum CodingKeys: String, CodingKey { case type, vocab, merges }

        init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            type = try c.decodeIfPresent(String.self, forKey: .type) ?? "BPE"
            vocab = try c.decode([String: Int].self, forKey: .vocab)
            if let pairs = try? c.decode([[String]].self, forKey: .merges) {
                merges = try pairs.map { p in
                    guard p.count == 2 else {
                        throw DecodingError.dataCorruptedError(forKey: .merges, in: c, debugDescription: "a merge is not a pair")
                    }
                    return (p[0], p[1])
                }
            } else {
                merges = try c.decode([String].self, forKey: .merges).map { line in
                    let parts = line.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
                    return (String(parts[0]), parts.count > 1 ? String(parts[1]) : "")
                }
            }
        }
    }

    var model: Model
    var addedTokens: [Added]?
    var normalizer: Normalizer?
    var preTokenizer: PreTokenizer?

    enum CodingKeys: String, CodingKey {
        case model, addedTokens = "added_tokens", normalizer, preTokenizer = "pre_tokenizer"
    }
}
