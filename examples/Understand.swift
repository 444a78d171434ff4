// Image + question -> answer, streamed token by token.
import CoreGraphics
import Foundation
import MobileO

@available(iOS 18.0, macOS 15.0, *)
enum UnderstandExample {
    /// Loads the vision encoder and the LLM only (never the DiT or VAE).
    static func run(export: URL, photo: CGImage) async throws -> String {
        let engine = try GenerateExample.makeEngine(export: export)
        // upright (a camera photo is often stored sideways: pass its orientation), expanded to a
        // square, resized to the encoder's size, in sRGB — facts from the manifest
        let pixels = try engine.pixels(from: photo, orientation: .up)
        var answer = ""
        for try await event in engine.understandingEvents(pixels: pixels, question: "What is in the picture?",
                                                          options: .init(maxNewTokens: 128, temperature: 0)) {
            switch event {
            case .progress(.token(_, let text)): print(text, terminator: "")
            case .progress: break
            case .finished(let a): answer = a.text
            }
        }
        return answer
    }
}

/// Text-only chat (the LLM alone), keeping the conversation.
@available(iOS 18.0, macOS 15.0, *)
@MainActor
final class ChatModel {
    private(set) var history: [ChatTurn] = []
    private(set) var typing = ""
    private let engine: MobileOEngine

    init(engine: MobileOEngine) { self.engine = engine }

    func send(_ message: String) async throws {
        typing = ""
        for try await event in engine.chatEvents(message, history: history, options: .init(maxNewTokens: 256)) {
            switch event {
            case .progress(.token(_, let text)): typing += text
            case .progress: break
            case .finished(let answer): history.append(ChatTurn(user: message, assistant: answer.text))
            }
        }
    }
}
