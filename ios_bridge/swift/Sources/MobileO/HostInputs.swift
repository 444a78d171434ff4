import Foundation

/// The inputs the app computes before each Core ML call, so the bundles stay pure fp16 with no
/// integer or gather ops.  Each is the Swift twin of a numpy function in
/// weights/bundles/contract.py (checked against it by the golden vectors, `host.json`):
/// `rope`, `causalBias`, `cachePosition`, `timestepFeatures`; `EmbeddingTable` reads the
/// token-embedding rows (`contract.EMBEDDINGS_FILE`).  Shapes follow the bundle contract
/// ((1, C, 1, S) channels-first), values row-major.
public enum HostInputs {
    /// RoPE cos and sin, each (1, headDim, 1, S) for `positions`: fp32 inverse frequencies
    /// theta^(-2i/d), fp32 angles, the half table repeated twice along headDim (transformers' Qwen2).
    public static func rope(positions: [Int], headDim d: Int, theta: Double) -> (cos: [Float], sin: [Float]) {
        let half = d / 2, s = positions.count
        var cos = [Float](repeating: 0, count: d * s), sin = cos
        for i in 0..<half {
            let exponent = Float(2 * i) / Float(d)
            let inv = 1 / powf(Float(theta), exponent)
            for (j, p) in positions.enumerated() {
                let a = Float(p) * inv
                let c = Foundation.cos(a), sn = Foundation.sin(a)
                cos[i * s + j] = c; cos[(i + half) * s + j] = c
                sin[i * s + j] = sn; sin[(i + half) * s + j] = sn
            }
        }
        return (cos, sin)
    }

    /// Additive attention bias (1, K, 1, Q): 0 where key position <= query position (and the
    /// key is real when `keyValid` is given), else `maskBias` (-1e4).
    public static func causalBias(queries: [Int], keys: [Int], keyValid: [Bool]? = nil, maskBias: Float) -> [Float] {
        var out = [Float](repeating: 0, count: keys.count * queries.count)
        for (k, kp) in keys.enumerated() {
            for (q, qp) in queries.enumerated() where kp > qp || !(keyValid?[k] ?? true) {
                out[k * queries.count + q] = maskBias
            }
        }
        return out
    }

    /// The llm's `position` input (1,) int32: a call writes cache slots position ..< position + count
    /// in place (one `slice_update` per layer), and only those (contract.cache_position).
    public static func cachePosition(position: Int, count: Int, slots: Int) throws -> [Float] {
        guard count > 0, position >= 0, position + count <= slots else {
            throw MobileOError(.runner, "a cache write of \(count) slots at \(position) does not fit the \(slots)-slot cache.",
                               fix: "keep prompts and answers within the manifest's context_length.")
        }
        return [Float(position)]
    }

    /// diffusers' Timesteps(channels, flip_sin_to_cos: true, shift 0) in fp32: per timestep
    /// [cos(t f_i), sin(t f_i)], f_i = exp(-ln(maxPeriod) i / half) -> (B, channels, 1, 1).
    public static func timestepFeatures(_ timesteps: [Float], channels: Int, maxPeriod: Double) -> [Float] {
        let half = channels / 2
        let logMax = Float(Foundation.log(maxPeriod))
        let freqs = (0..<half).map { Foundation.exp(-logMax * Float($0) / Float(half)) }
        var out = [Float]()
        out.reserveCapacity(timesteps.count * channels)
        for t in timesteps {
            out += freqs.map { Foundation.cos(t * $0) }
            out += freqs.map { Foundation.sin(t * $0) }
        }
        return out
    }
}

/// The token-embedding table beside the llm bundle, memory-mapped; `rows` reads the
/// embeddings of token ids, row by row.  Formats (the manifest's `files[].dtype`,
/// contract.EMBEDDINGS_FILE): "float16", raw little-endian fp16 [vocab, hidden];
/// "int4_row_scale" (what the converter writes, contract.quantize_rows), each row `hidden`
/// int4 values, two a byte (column 2j in the low nibble, two's complement -8...7), then its
/// little-endian fp16 scale (value = int4 * scale) -- a quarter of the bytes; or
/// "int8_row_scale", each row `hidden` int8 values then its fp16 scale.
public final class EmbeddingTable {
    /// How the rows are stored: raw fp16, or int4 / int8 rows each followed by its fp16 scale.
    public enum Format: String, Sendable {
        case float16, int8RowScale = "int8_row_scale", int4RowScale = "int4_row_scale"
    }
    /// Rows (vocabulary size), columns (hidden size) and storage format.
    public let vocab: Int, hidden: Int, format: Format
    let data: Data

    var rowBytes: Int { EmbeddingTable.rowBytes(format, hidden) }

    static func rowBytes(_ format: Format, _ hidden: Int) -> Int {
        switch format {
        case .float16: return hidden * 2
        case .int8RowScale: return hidden + 2
        case .int4RowScale: return (hidden + 1) / 2 + 2
        }
    }

    /// Map the table file at `url` of `vocab` x `hidden` in `dtype` ("float16",
    /// "int4_row_scale" or "int8_row_scale"); throws when its size disagrees.
    public init(url: URL, vocab: Int, hidden: Int, dtype: String = "float16") throws {
        guard let format = Format(rawValue: dtype) else {
            throw MobileOError(.runner, "the embedding table's dtype \(dtype) is not one this package reads.",
                               fix: "re-export with python -m coreml_convert, or update the Swift package.")
        }
        self.format = format
        let data: Data
        do { data = try Data(contentsOf: url, options: .alwaysMapped) } catch {
            throw MobileOError(.runner, "cannot read the embedding table \(url.path): \(error.localizedDescription)",
                               fix: "copy every file manifest.json lists beside it (check with python -m ios_bridge.validate).")
        }
        guard data.count == vocab * EmbeddingTable.rowBytes(format, hidden) else {
            throw MobileOError(.runner, "\(url.lastPathComponent) holds \(data.count) bytes, not \(vocab) rows of \(hidden) \(dtype) values.",
                               fix: "re-export with python -m coreml_convert.")
        }
        self.data = data; self.vocab = vocab; self.hidden = hidden
    }

    /// Embeddings of `ids` as rows [ids.count, hidden].
    public func rows(_ ids: [Int]) throws -> Tensor {
        var out = [Float](repeating: 0, count: ids.count * hidden)
        try data.withUnsafeBytes { raw in
            for (r, id) in ids.enumerated() {
                guard id >= 0, id < vocab else {
                    throw MobileOError(.runner, "token id \(id) is outside the vocabulary (\(vocab)).")
                }
                let row = id * rowBytes
                switch format {
                case .float16:
                    for c in 0..<hidden {
                        let bits = raw.loadUnaligned(fromByteOffset: row + c * 2, as: UInt16.self)
                        out[r * hidden + c] = Half.value(UInt16(littleEndian: bits))
                    }
                case .int8RowScale:
                    let scale = Half.value(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: row + hidden, as: UInt16.self)))
                    for c in 0..<hidden {
                        out[r * hidden + c] = Float(raw.load(fromByteOffset: row + c, as: Int8.self)) * scale
                    }
                case .int4RowScale:
                    let packed = (hidden + 1) / 2
                    let scale = Half.value(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: row + packed, as: UInt16.self)))
                    for c in 0..<hidden {
                        let byte = raw.load(fromByteOffset: row + c / 2, as: UInt8.self)
                        let nibble = Int(c % 2 == 0 ? byte & 0x0F : byte >> 4)
                        out[r * hidden + c] = Float(nibble > 7 ? nibble - 16 : nibble) * scale
                    }
                }
            }
        }
        return Tensor(uncheckedShape: [ids.count, hidden], data: out)
    }
}
