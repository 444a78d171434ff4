import Foundation

/// The prompt templates from the manifest (weights/core/prompts.py on the Python side).
public struct PromptTemplates: Equatable, Sendable {
    /// The manifest's templates.
    public let prompts: Manifest.Prompts

    /// Templates from the manifest's `pipeline.prompts`.
    public init(_ prompts: Manifest.Prompts) { self.prompts = prompts }

    /// Fill `{slot}` once, inserting `value` verbatim (like Python's str.format).
    static func fill(_ template: String, _ slot: String, _ value: String) -> String {
        guard let r = template.range(of: "{\(slot)}") else { return template }
        return template.replacingCharacters(in: r, with: value)
    }

    /// `userTurn` in the chat template (system turn, user turn, assistant header).
    public func chat(_ userTurn: String) -> String { Self.fill(prompts.chat, "qs", userTurn) }

    /// A generation prompt in its template, inside the chat template.
    public func generation(_ prompt: String) -> String {
        chat(Self.fill(prompts.generation, "prompt", prompt))
    }

    /// A question about an image (with the image placeholder) inside the chat template.
    public func understanding(_ question: String) -> String {
        chat(Self.fill(prompts.understanding, "question", question))
    }

    /// An editing instruction (with the image placeholder) inside the chat template.
    public func editing(_ instruction: String) -> String {
        chat(Self.fill(prompts.editing, "instruction", instruction))
    }

    /// A text-only conversation in the chat template: the earlier turns (each closed with the
    /// template's end-of-turn marker), then `message` and the assistant's header.  Without
    /// history this is `chat(message)`.
    public func conversation(_ message: String, history: [ChatTurn]) throws -> String {
        guard !history.isEmpty else { return chat(message) }
        let end = "<|im_end|>\n"
        guard let slot = prompts.chat.range(of: "{qs}"),
              let headEnd = prompts.chat[..<slot.lowerBound].range(of: end, options: .backwards),
              prompts.chat[slot.upperBound...].hasPrefix(end) else {
            throw MobileOError(.manifest, "the chat template has no \(end.debugDescription)-delimited user turn around {qs}; text chat with history needs one.")
        }
        let head = String(prompts.chat[..<headEnd.upperBound])           // system turn
        let user = String(prompts.chat[headEnd.upperBound..<slot.lowerBound])  // user header
        let tail = String(prompts.chat[slot.upperBound...])              // end of turn + assistant header
        var text = head
        for turn in history { text += user + turn.user + tail + turn.assistant + end }
        return text + user + message + tail
    }
}

/// One earlier exchange of a text chat.
public struct ChatTurn: Sendable, Equatable {
    /// What the user wrote.
    public var user: String
    /// What the assistant answered.
    public var assistant: String
    /// One exchange.
    public init(user: String, assistant: String) { self.user = user; self.assistant = assistant }
}

/// A prompt as the language model sees it: token ids, with the image's embeddings where
/// the `<image>` placeholder token stood.
public enum PromptSegment: Equatable, Sendable {
    case tokens([Int])
    case image(Tensor)  // [N, D] image embeddings in the LLM's space

    /// The prompt as the language model sees it.  With an image, the ids must hold exactly
    /// one `imageTokenId` (the `<image>` placeholder), replaced by the image's rows; without
    /// one, every id is a token (as mlx_model.components.multimodal / mlx_model.pipelines.generation do).
    public static func build(ids: [Int], imageTokenId: Int, image: Tensor?) throws -> [PromptSegment] {
        guard let image else { return [.tokens(ids)] }
        let count = ids.filter { $0 == imageTokenId }.count
        guard count == 1, let at = ids.firstIndex(of: imageTokenId) else {
            throw MobileOError(.pipeline, "the prompt holds \(count) image placeholders; Mobile-O takes exactly one image.",
                               fix: "remove the image placeholder from the question or instruction.")
        }
        var out = [PromptSegment]()
        if at > 0 { out.append(.tokens(Array(ids[..<at]))) }
        out.append(.image(image))
        if at + 1 < ids.count { out.append(.tokens(Array(ids[(at + 1)...]))) }
        return out
    }

    /// Flat ids with `imageTokenId` at every image position (mlx_model's `prompt_ids`).
    public static func flatIds(_ segments: [PromptSegment], imageTokenId: Int) -> [Int] {
        segments.flatMap { seg -> [Int] in
            switch seg {
            case .tokens(let t): return t
            case .image(let e): return [Int](repeating: imageTokenId, count: e.shape.first ?? 0)
            }
        }
    }

    /// Number of sequence positions.
    public var length: Int {
        switch self {
        case .tokens(let t): return t.count
        case .image(let e): return e.shape.first ?? 0
        }
    }
}
