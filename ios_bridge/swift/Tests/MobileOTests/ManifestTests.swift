import XCTest
@testable import MobileO

final class ManifestTests: XCTestCase {
    func goldenData() throws -> Data {
        let url = try Golden.manifestURL().appendingPathComponent(Manifest.fileName)
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw XCTSkip("\(url.path) is missing, so this test is skipped: run `make swift-test`.")
        }
        return data
    }

    func testDecodesTheExportedManifest() throws {
        let m = try Manifest.load(from: try Golden.manifestURL())
        XCTAssertEqual(m.schemaVersion, Manifest.supportedSchemaVersion)
        XCTAssertFalse(m.components.isEmpty)
        let p = m.pipeline
        XCTAssertEqual(p.scheduler.type, FlowDPMSolver.typeName)
        XCTAssertEqual(p.scheduler.config.flowShift, 3.0)
        XCTAssertEqual(p.defaults.steps, 20)
        XCTAssertEqual(p.defaults.guidance, 1.5)
        XCTAssertEqual(p.latentShape.count, 3)
        XCTAssertEqual(p.vaeScalingFactor, 0.41407)
        XCTAssertTrue(p.prompts.chat.contains("{qs}"))
        // every special token id in the manifest is the tokenizer's id for that name
        let tok = try BPETokenizer(tokenizerJSON: try Golden.manifestURL().appendingPathComponent(p.tokenizer.tokenizerJSON!))
        for t in p.tokenizer.specialTokens { XCTAssertEqual(tok.tokenId(t.name), t.id, t.name) }
        for c in m.components {
            XCTAssertFalse(c.outputs.isEmpty, c.name)
            for (gate, psnr) in c.gates { XCTAssertGreaterThanOrEqual(psnr, 35, "\(c.name) \(gate)") }
        }
        XCTAssertNotNil(try p.makeSampler(steps: 20) as? FlowDPMSolver)
    }

    /// Mutate the golden manifest and expect a one-line error containing `expected`.
    func assertRejected(_ expected: String, file: StaticString = #filePath, line: UInt = #line,
                        _ mutate: (inout [String: Any]) -> Void) throws {
        var json = try JSONSerialization.jsonObject(with: try goldenData()) as! [String: Any]
        mutate(&json)
        let data = try JSONSerialization.data(withJSONObject: json)
        XCTAssertThrowsError(try Manifest.decode(data), file: file, line: line) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(expected), "expected '\(expected)' in: \(text)", file: file, line: line)
            XCTAssertFalse(text.contains("\n"), "error is not one line: \(text)", file: file, line: line)
            XCTAssertTrue(text.hasPrefix("manifest: "), text, file: file, line: line)
        }
    }

    static func edit(_ json: inout [String: Any], _ path: [String], _ f: (inout Any) -> Void) {
        guard let head = path.first else { return }
        if path.count == 1 {
            var v: Any = json[head] ?? NSNull()
            f(&v)
            json[head] = v is NSNull ? nil : v
            return
        }
        if var arr = json[head] as? [Any], let i = Int(path[1]) {
            var inner = arr[i] as! [String: Any]
            if path.count == 2 {
                var v: Any = inner
                f(&v)
                arr[i] = v
            } else {
                edit(&inner, Array(path.dropFirst(2)), f)
                arr[i] = inner
            }
            json[head] = arr
        } else {
            var inner = json[head] as! [String: Any]
            edit(&inner, Array(path.dropFirst()), f)
            json[head] = inner
        }
    }

    func set(_ path: String, _ value: Any?) -> (inout [String: Any]) -> Void {
        { json in Self.edit(&json, path.split(separator: ".").map(String.init)) { $0 = value ?? NSNull() } }
    }

    func testRejectsBadManifests() throws {
        try assertRejected("schema_version 1 is not supported", set("schema_version", 1))
        try assertRejected("missing key 'scheduler'", set("pipeline.scheduler", nil))
        try assertRejected("missing key 'id'", set("model.id", nil))
        try assertRejected("wrong type at components[0].bytes", set("components.0.bytes", "many"))
        try assertRejected("is not 64 lowercase hex digits", set("components.0.sha256", "abc"))
        try assertRejected("must be a path inside the manifest's folder", set("components.0.file", "../dit.mlpackage"))
        try assertRejected("not both", set("components.0.chunks", [["file": "a.mlpackage", "sha256": String(repeating: "0", count: 64), "bytes": 1]]))
        try assertRejected("neither", { json in
            Self.edit(&json, ["components", "0"]) { v in
                var d = v as! [String: Any]; d["file"] = nil; d["sha256"] = nil; d["bytes"] = nil; v = d
            }
        })
        try assertRejected("invalid value at components[0].compute_units", set("components.0.compute_units", "gpuOnly"))
        try assertRejected("invalid value at components[0].inputs[0].dtype", set("components.0.inputs.0.dtype", "bfloat16"))
        try assertRejected("has layout", set("components.0.inputs.0.layout", "B,C"))
        try assertRejected("listed twice", { json in
            var comps = json["components"] as! [Any]; comps.append(comps[0]); json["components"] = comps
        })
        try assertRejected("use_flow_sigmas", set("pipeline.scheduler.config.use_flow_sigmas", false))
        try assertRejected("scheduler type 'ddim' is unknown", set("pipeline.scheduler.type", "ddim"))
        try assertRejected("latent_shape", set("pipeline.latent_shape", [8, 8]))
        try assertRejected("vae_scaling_factor", set("pipeline.vae_scaling_factor", 0))
        try assertRejected("lacks its {prompt} slot", set("pipeline.prompts.generation", "no slot"))
        try assertRejected("role 'eos'", set("pipeline.tokenizer.roles.eos", "<|nope|>"))
        try assertRejected("lists no tokenizer.json", set("pipeline.tokenizer.files", [[String: Any]]()))
        try assertRejected("gate program_psnr_db is NaN", set("components.0.gates.program_psnr_db", "NaN"))
        XCTAssertThrowsError(try Manifest.decode(Data("{not json".utf8))) { e in
            XCTAssertTrue("\(e)".contains("not valid JSON"), "\(e)")
        }
        XCTAssertThrowsError(try Manifest.load(from: URL(fileURLWithPath: "/nonexistent/export"))) { e in
            XCTAssertTrue("\(e)".contains("does not exist"), "\(e)")
        }
    }

    func testNonFiniteGatesAndOpenFields() throws {
        var json = try JSONSerialization.jsonObject(with: try goldenData()) as! [String: Any]
        Self.edit(&json, ["components", "0", "gates", "program_psnr_db"]) { $0 = "Infinity" }
        Self.edit(&json, ["components", "0", "compression"]) { $0 = ["mode": "palettize", "nbits": 4] }
        let m = try Manifest.decode(try JSONSerialization.data(withJSONObject: json))
        XCTAssertEqual(m.components[0].gates["program_psnr_db"], .infinity)
        XCTAssertEqual(m.components[0].compression["nbits"], .number(4))
        XCTAssertEqual(m.components[0].compression["mode"]?.stringValue, "palettize")
    }

    /// The golden manifest's first component made a two-function bundle, as llm is (it has three):
    /// the default function "main" (its top-level I/O) and "prefill" with its own I/O.
    func withFunctionIO(_ prefill: [String: Any]? = nil, _ mutate: (inout [String: Any]) -> Void = { _ in }) throws -> [String: Any] {
        var json = try JSONSerialization.jsonObject(with: try goldenData()) as! [String: Any]
        Self.edit(&json, ["components", "0"]) { v in
            var c = v as! [String: Any]
            let chunk: [String: Any] = ["name": "input_ids", "shape": [1, 64], "dtype": "int32", "layout": "B,S"]
            let hidden: [String: Any] = ["name": "hidden_states", "shape": [1, 8, 1, 64], "dtype": "float16", "layout": "B,C,1,S"]
            c["functions"] = ["main", "prefill"]
            c["function_io"] = ["main": ["inputs": c["inputs"]!, "outputs": c["outputs"]!],
                                "prefill": prefill ?? ["inputs": [chunk], "outputs": [hidden]]]
            mutate(&c)
            v = c
        }
        return json
    }

    func testDecodesPerFunctionIO() throws {
        let m = try Manifest.decode(try JSONSerialization.data(withJSONObject: try withFunctionIO()))
        let c = m.components[0]
        XCTAssertEqual(c.functionIO?.keys.sorted(), ["main", "prefill"])
        XCTAssertEqual(c.io(function: "prefill")?.inputs.map(\.name), ["input_ids"])
        XCTAssertEqual(c.input("input_ids", function: "prefill")?.shape, [1, 64])
        XCTAssertEqual(c.output("hidden_states", function: "prefill")?.layout, "B,C,1,S")
        XCTAssertEqual(c.io(), c.io(function: "main"))
        XCTAssertEqual(c.io()?.inputs, c.inputs)
        XCTAssertNil(c.input("input_ids"), "the default function's inputs are the top-level ones")
        XCTAssertNil(c.io(function: "absent"))
        // single-function components carry no function_io; their one function's I/O is the top level
        let plain = try Manifest.load(from: try Golden.manifestURL()).components[0]
        XCTAssertNil(plain.functionIO)
        XCTAssertEqual(plain.io(function: plain.functions[0])?.outputs, plain.outputs)
    }

    func testRejectsBadFunctionIO() throws {
        let t: [String: Any] = ["name": "x", "shape": [1, 4], "dtype": "int32", "layout": "B,S"]
        for (expected, json) in [
            ("function_io names 'prefill', which is not among its functions", try withFunctionIO { $0["functions"] = ["main"] }),
            ("function 'prefill' needs inputs and outputs", try withFunctionIO(["inputs": [t], "outputs": [Any]()])),
            ("function 'prefill' needs inputs and outputs", try withFunctionIO(["inputs": [Any](), "outputs": [t]])),
            ("function 'prefill' input 'x' is listed twice", try withFunctionIO(["inputs": [t, t], "outputs": [t]])),
            ("function 'prefill' output 'x' has layout", try withFunctionIO(["inputs": [t], "outputs": [t.merging(["layout": "B"]) { $1 }]])),
            ("missing key 'outputs'", try withFunctionIO(["inputs": [t]])),
            ("default function 'main' differs from inputs/outputs", try withFunctionIO { c in
                var io = c["function_io"] as! [String: Any]; io["main"] = ["inputs": [t], "outputs": [t]]; c["function_io"] = io
            }),
        ] {
            XCTAssertThrowsError(try Manifest.decode(try JSONSerialization.data(withJSONObject: json))) { error in
                XCTAssertTrue("\(error)".contains(expected), "expected '\(expected)' in: \(error)")
                XCTAssertFalse("\(error)".contains("\n"), "\(error)")
            }
        }
    }

    func testPromptTemplatesMatchPython() throws {
        let m = try Manifest.load(from: try Golden.manifestURL())
        let t = PromptTemplates(m.pipeline.prompts)
        let g = t.generation("a {braced} cup")
        XCTAssertTrue(g.hasPrefix("<|im_start|>system\n"), g)
        XCTAssertTrue(g.contains("caption: a {braced} cup<|im_end|>"), g)
        XCTAssertTrue(g.hasSuffix("<|im_start|>assistant\n"), g)
        XCTAssertTrue(t.understanding("why?").contains("<image>\nwhy?"))
        XCTAssertTrue(t.editing("blue").contains("<image>\nPlease edit"))
    }
}
