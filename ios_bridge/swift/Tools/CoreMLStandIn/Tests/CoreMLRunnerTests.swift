// CoreMLRunner.swift executed on Linux: the real runners (CoreMLRunners.loaders, the compile
// cache, CoreMLComponent, MultiArrays, CoreMLMCP, CoreMLDiT, CoreMLVAE) over the functional
// Core ML stand-in, whose predictions are the export's mcp, dit and vae_decoder bundles executed by
// coreml_convert/mil_exec.py (recorded by tests/tools/golden.py).  The stand-in checks every
// input the runners build against the recording; the final latents must equal Python's.
// Built and run by Tools/typecheck-coreml.sh (`make swift-test`).
import CoreML
import Foundation
import XCTest
@testable import MobileO

final class CoreMLResult: Decodable {
    var prompt: String, steps: Int, guidance: Double, initial: [Float], latents: [Float]
    var edit: CoreMLResult?  // when the export has the llm and the vision encoder
    var unit: [Float]?, rgb: [Int]?  // when the export has a vae_decoder
    var llm: Bool?  // the export's llm made the hidden states
    struct Understand: Decodable {
        var question: String, maxNewTokens: Int, promptIds: [Int], ids: [Int]
        enum CodingKeys: String, CodingKey { case question, maxNewTokens = "max_new_tokens", promptIds = "prompt_ids", ids }
    }
    var understand: Understand?  // when the export has the llm and the vision encoder
    struct Chat: Decodable {
        var message: String, maxNewTokens: Int, promptIds: [Int], ids: [Int]
        enum CodingKeys: String, CodingKey { case message, maxNewTokens = "max_new_tokens", promptIds = "prompt_ids", ids }
    }
    var chat: Chat?  // when the export has the llm
}

final class CoreMLRunnerTests: XCTestCase {
    override func setUp() async throws {
        guard ProcessInfo.processInfo.environment["MOBILEO_COREML_RECORDING"] != nil else {
            throw XCTSkip("MOBILEO_COREML_RECORDING is not set: run `make swift-test`.")
        }
        Recording.shared.rewind()
    }

    func testGenerateThroughTheCoreMLRunnersEqualsPython() async throws {
        let r = try Golden.load(CoreMLResult.self, "coreml/result.json")
        let dir = try Golden.manifestURL()
        let m = try Manifest.load(from: dir)
        let tok = try BPETokenizer(tokenizerJSON: dir.appendingPathComponent(m.pipeline.tokenizer.tokenizerJSON!))
        let c = m.pipeline.conditioning
        let coreML = CoreMLRunners.loaders(manifest: m, folder: dir, computeUnits: .cpuOnly)
        let factor = m.pipeline.vaeScalingFactor
        let fakeVAE: @Sendable () async throws -> any DecoderRunner = { ScaledDecoder(scalingFactor: factor, raw: { try FakeVAE.decode($0) }) }
        let vocab = m.pipeline.tokenizer.vocabSize, eos = m.pipeline.tokenizer.id(ofRole: "eos")!
        let fakeLLM: @Sendable () async throws -> any LanguageModelRunner = { FakeLLM(dim: c.llmHiddenSize, vocab: vocab, eos: eos) }
        let loaders = RunnerLoaders(
            llm: r.llm == true ? coreML.llm : fakeLLM,
            vision: r.understand == nil ? nil : coreML.vision, mcp: coreML.mcp, dit: coreML.dit,
            vae: r.unit == nil ? fakeVAE : coreML.vae)
        let engine = try MobileOEngine(manifest: m, tokenizer: tok, loaders: loaders, memoryPolicy: .reduceMemory)
        try? FileManager.default.removeItem(at: try CoreMLComponent.cacheFolder())  // first use: compiles
        let events = EventList()
        let out = try await engine.generate(prompt: r.prompt, options: .init(
            steps: r.steps, guidance: r.guidance, initialLatents: try Tensor(shape: m.pipeline.latentShape, data: r.initial))) { e in
            switch e {
            case .loading(let c): events.add("loading \(c)")
            case .compiling(let c): events.add("compiling \(c)")
            case .loaded(let c): events.add("loaded \(c)")
            default: break
            }
        }
        XCTAssertEqual(events.items.filter { $0.hasSuffix(" dit") }, ["loading dit", "compiling dit", "loaded dit"],
                       "load events per component, with the first-use compile")
        let loadedForGeneration = MLModel.loaded.filter { $0.hasPrefix("llm.") }
        if r.llm == true {
            XCTAssertEqual(Array(loadedForGeneration.suffix(1)), ["llm.mlpackage hidden_states"],
                           "generation loads only the llm's hidden_states function")
        }
        var answer = ""
        if let u = r.understand {
            let a = try await engine.understand(pixels: fakePixels(m.pipeline.imagePreprocess.size), question: u.question,
                                                options: .init(maxNewTokens: u.maxNewTokens, temperature: 0))
            XCTAssertEqual(a.promptIds, u.promptIds)
            XCTAssertEqual(a.ids, u.ids, "answer tokens through CoreMLVision + CoreMLLanguageModel (prefill, decode, KV-cache state)")
            XCTAssertEqual(Set(MLModel.loaded.filter { $0.hasPrefix("llm.") }.dropFirst(loadedForGeneration.count)),
                           ["llm.mlpackage prefill", "llm.mlpackage decode"], "understanding loads prefill and decode only")
            answer = "; understand through CoreMLVision + CoreMLLanguageModel: \(a.ids.count) tokens \(a.ids == u.ids ? "equal" : "DIFFER")"
        }
        var edited = ""
        if let e = r.edit {
            let out = try await engine.edit(pixels: fakePixels(m.pipeline.imagePreprocess.size), instruction: e.prompt, options: .init(
                steps: e.steps, guidance: e.guidance, initialLatents: try Tensor(shape: m.pipeline.latentShape, data: e.initial)))
            let dl = maxAbsDiff(out.latents.data, e.latents)
            XCTAssertLessThanOrEqual(dl, 1e-3)
            let dr = zip(out.image.pixels, e.rgb ?? []).map { abs(Int($0) - $1) }.max() ?? 0
            XCTAssertLessThanOrEqual(dr, 1)
            edited = "; edit through CoreMLVision + CoreMLLanguageModel + MCP + DiT + VAE: latents \(dl), uint8 \(dr)"
        }
        if let c = r.chat {
            let a = try await engine.chat(c.message, options: .init(maxNewTokens: c.maxNewTokens, temperature: 0))
            XCTAssertEqual(a.promptIds, c.promptIds)
            XCTAssertEqual(a.ids, c.ids, "chat tokens through CoreMLLanguageModel")
            edited += "; chat: \(a.ids.count) tokens \(a.ids == c.ids ? "equal" : "DIFFER")"
        }
        XCTAssertEqual(Recording.shared.remaining, 0, "every recorded prediction was made, with the recorded inputs")
        let d = maxAbsDiff(out.latents.data, r.latents)
        XCTAssertLessThanOrEqual(d, 1e-3)
        var image = ""
        if let unit = r.unit, let rgb = r.rgb {
            let du = maxAbsDiff(out.unit.data, unit)
            let dr = zip(out.image.pixels, rgb).map { abs(Int($0) - $1) }.max() ?? 0
            XCTAssertLessThanOrEqual(du, 1e-3)
            XCTAssertLessThanOrEqual(dr, 1)
            XCTAssertEqual(out.image.pixels.count, rgb.count)
            image = ", image \(du), uint8 \(dr)"
        }
        print("coreml stand-in: generate through \(r.llm == true ? "CoreMLLanguageModel + " : "")CoreMLMCP + CoreMLDiT\(r.unit == nil ? "" : " + CoreMLVAE") (mil_exec recordings, padded output strides): max |swift - python| final latents \(d)\(image)\(answer)\(edited)")
    }

    /// The stand-in is a check, not a replay: latents the recording did not see are refused.
    func testInputsOtherThanTheRecordedOnesAreRefused() async throws {
        let r = try Golden.load(CoreMLResult.self, "coreml/result.json")
        let dir = try Golden.manifestURL()
        let m = try Manifest.load(from: dir)
        let coreML = CoreMLRunners.loaders(manifest: m, folder: dir)
        let dit = try await coreML.dit()
        let tok = try BPETokenizer(tokenizerJSON: dir.appendingPathComponent(m.pipeline.tokenizer.tokenizerJSON!))
        let length = try tok.encode(PromptTemplates(m.pipeline.prompts).generation(r.prompt)).count  // the recorded one
        let context = Tensor(zeros: [2, length, m.pipeline.conditioning.captionChannels])
        let latents = try Tensor(shape: [2] + m.pipeline.latentShape, data: (r.initial + r.initial).map { $0 + 0.5 })
        do {
            _ = try await dit.velocity(latents: latents, timestep: 999, conditioning: context)
            XCTFail("expected the stand-in to refuse")
        } catch {
            XCTAssertTrue("\(error)".contains("differs from the recording"), "\(error)")
        }
    }

    func testConcurrentLoadersCompileOnceIntoTheCache() async throws {
        let dir = try Golden.manifestURL()
        let m = try Manifest.load(from: dir)
        let caches = try CoreMLComponent.cacheFolder()
        let sha = try XCTUnwrap(m.component("dit")?.sha256)
        try? FileManager.default.removeItem(at: caches.appendingPathComponent("\(sha).mlmodelc"))
        let before = MLModel.compileCount
        let loaders = CoreMLRunners.loaders(manifest: m, folder: dir)
        async let a = loaders.dit()
        async let b = loaders.dit()
        _ = try await (a, b)
        XCTAssertEqual(MLModel.compileCount - before, 1, "one compile per key")
        let left = try FileManager.default.contentsOfDirectory(atPath: caches.path).filter { $0.hasSuffix(".partial") }
        XCTAssertEqual(left, [], "nothing half-written is left")
        XCTAssertTrue(FileManager.default.fileExists(atPath: caches.appendingPathComponent("\(sha).mlmodelc/source.txt").path))
    }

    func testPaddedStridesAreRead() throws {
        // (2, 3) with rows padded to 8: the runner's reader must honour the strides
        let a = try MLMultiArray(shape: [2, 3], dataType: .float32)
        XCTAssertEqual(a.strides.map(\.intValue), [3, 1])
        let padded = MLMultiArray(paddedShape: [2, 3], rowLength: 8, dataType: .float16, values: [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(padded.strides.map(\.intValue), [8, 1])
        XCTAssertEqual(MultiArrays.read(padded).data, [1, 2, 3, 4, 5, 6])
    }
}

final class EventList: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [String] = []
    func add(_ e: String) { lock.withLock { list.append(e) } }
    var items: [String] { lock.withLock { list } }
}
