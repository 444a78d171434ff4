import XCTest
@testable import MobileO

/// Swift's host-side inputs vs weights/bundles/contract.py (golden host.json).
final class HostInputsTests: XCTestCase {
    struct Update: Decodable { let position: Int; let count: Int; let slots: Int; let value: [Float] }
    struct Host: Decodable {
        let head_dim: Int; let rope_theta: Double; let positions: [Int]; let cos: [Float]; let sin: [Float]
        let bias_queries: [Int]; let bias_keys: [Int]; let bias_valid: [Float]; let bias: [Float]; let mask_bias: Float
        let update: [Update]
        struct Rows: Decodable { let vocab: Int; let hidden: Int; let dtype: String; let bytes: [UInt8]; let values: [Float] }
        let embedding_rows: Rows
        let timesteps: [Float]; let timestep_channels: Int; let timestep_max_period: Double; let timestep_features: [Float]
    }

    func testRopeMatchesContract() throws {
        let g = try Golden.load(Host.self, "host.json")
        let (cos, sin) = HostInputs.rope(positions: g.positions, headDim: g.head_dim, theta: g.rope_theta)
        XCTAssertLessThan(maxAbsDiff(cos, g.cos), 2e-3)  // fp32 angles up to ~800 rad; fed as fp16
        XCTAssertLessThan(maxAbsDiff(sin, g.sin), 2e-3)
    }

    func testMasksMatchContract() throws {
        let g = try Golden.load(Host.self, "host.json")
        XCTAssertEqual(HostInputs.causalBias(queries: g.bias_queries, keys: g.bias_keys,
                                             keyValid: g.bias_valid.map { $0 > 0 }, maskBias: g.mask_bias), g.bias)
        for u in g.update {
            XCTAssertEqual(try HostInputs.cachePosition(position: u.position, count: u.count, slots: u.slots), u.value)
        }
        XCTAssertThrowsError(try HostInputs.cachePosition(position: 720, count: 64, slots: 768))
        XCTAssertThrowsError(try HostInputs.cachePosition(position: -1, count: 1, slots: 768))
    }

    func testTimestepFeaturesMatchContract() throws {
        let g = try Golden.load(Host.self, "host.json")
        let f = HostInputs.timestepFeatures(g.timesteps, channels: g.timestep_channels, maxPeriod: g.timestep_max_period)
        XCTAssertLessThan(maxAbsDiff(f, g.timestep_features), 2e-3)
    }

    func testEmbeddingTableReadsFp16Rows() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("emb-\(UUID().uuidString).f16")
        let values: [Float] = [0, 1, -2, 0.5, 3, -0.25]  // 3 x 2
        var bytes = Data()
        for v in values { var b = Half.bits(v).littleEndian; bytes.append(Data(bytes: &b, count: 2)) }
        try bytes.write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        let t = try EmbeddingTable(url: url, vocab: 3, hidden: 2)
        XCTAssertEqual(try t.rows([2, 0]).data, [3, -0.25, 0, 1])
        XCTAssertThrowsError(try t.rows([3]))
        XCTAssertThrowsError(try EmbeddingTable(url: url, vocab: 4, hidden: 2))
    }

    func testEmbeddingTableReadsTheContractsRows() throws {
        let g = try Golden.load(Host.self, "host.json").embedding_rows
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("emb-\(UUID().uuidString).q8")
        try Data(g.bytes).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        let t = try EmbeddingTable(url: url, vocab: g.vocab, hidden: g.hidden, dtype: g.dtype)
        XCTAssertEqual(try t.rows([0, 1, 2]).data, g.values)  // int4 * fp16 scale: exact in fp32
    }

    func testEmbeddingTableReadsInt8RowsWithScales() throws {
        // contract.quantize_rows: each row int8 values then its fp16 scale; value = int8 * scale
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("emb-\(UUID().uuidString).q8")
        var bytes = Data()
        for (row, scale) in [([Int8(0), 127], Float(0.5)), ([-128, 64], 0.25)] as [([Int8], Float)] {
            bytes.append(contentsOf: row.map { UInt8(bitPattern: $0) })
            var b = Half.bits(scale).littleEndian
            bytes.append(Data(bytes: &b, count: 2))
        }
        try bytes.write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        let t = try EmbeddingTable(url: url, vocab: 2, hidden: 2, dtype: "int8_row_scale")
        XCTAssertEqual(try t.rows([1, 0]).data, [-32, 16, 0, 63.5])
        XCTAssertThrowsError(try EmbeddingTable(url: url, vocab: 3, hidden: 2, dtype: "int8_row_scale"))  // 8 bytes: 2 rows
        XCTAssertThrowsError(try EmbeddingTable(url: url, vocab: 2, hidden: 2, dtype: "int4"))
    }

    func testEmbeddingTableReadsInt4RowsWithScales() throws {
        // contract.quantize_rows: two int4 a byte (column 2j low nibble), then the fp16 scale
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("emb-\(UUID().uuidString).q4")
        var bytes = Data()
        for (pair, scale) in [((UInt8(0x7), UInt8(0x8)), Float(0.5)), ((0xF, 0x1), 0.25)] as [((UInt8, UInt8), Float)] {
            bytes.append(pair.0 | (pair.1 << 4))  // columns 0 and 1
            var b = Half.bits(scale).littleEndian
            bytes.append(Data(bytes: &b, count: 2))
        }
        try bytes.write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        let t = try EmbeddingTable(url: url, vocab: 2, hidden: 2, dtype: "int4_row_scale")
        XCTAssertEqual(try t.rows([0, 1]).data, [3.5, -4, -0.25, 0.25])
        XCTAssertThrowsError(try EmbeddingTable(url: url, vocab: 3, hidden: 2, dtype: "int4_row_scale"))  // 6 bytes: 2 rows
    }
}
