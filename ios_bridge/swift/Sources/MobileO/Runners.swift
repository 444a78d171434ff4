import Foundation

// The model-runner protocols the pipeline drives.  `CoreMLRunners` implements them with
// the exported bundles; tests implement them with small deterministic fakes.  Tensors are
// plain row-major arrays in the upstream (PyTorch) layouts noted on each method.

/// Qwen2 with Mobile-O's prompt handling.
public protocol LanguageModelRunner: AnyObject {
    /// The last `count` entries of transformers' `output_hidden_states` for the prompt
    /// (the last one after the final norm), each [L, D] with L = total prompt length.
    func hiddenStates(_ prompt: [PromptSegment], count: Int) throws -> [Tensor]
    /// Start a new sequence with `prompt`; returns the next-token logits [V].
    func prefill(_ prompt: [PromptSegment]) throws -> [Float]
    /// Append one token to the current sequence; returns the next-token logits [V].
    func decode(_ token: Int) throws -> [Float]
}

/// FastViTHD + projector: preprocessed pixels [3, S, S] in [0, 1] -> image embeddings [N, D].
public protocol VisionRunner: AnyObject {
    func imageEmbeddings(_ pixels: Tensor) throws -> Tensor
}

/// The Mobile Conditioning Projector: `count` hidden states [L, D] -> conditioning [L, caption_channels].
public protocol ConditioningRunner: AnyObject {
    func conditioning(_ hiddenStates: [Tensor]) throws -> Tensor
}

/// The DiT: latents [B, C, H, W], one timestep for the batch, conditioning [B, L, caption_channels]
/// -> velocity [B, C, H, W].  The pipeline passes B = 2: [unconditional, conditional].
public protocol DenoiserRunner: AnyObject {
    func velocity(latents: Tensor, timestep: Double, conditioning: Tensor) throws -> Tensor
}

/// The VAE decoder with Mobile-O's mapping to pixels: the sampler's latents [C, h, w] ->
/// image [3, H, W] in [0, 1] = clamp(decode(latents / scaling_factor) / 2 + 0.5, 0, 1)
/// (what the exported vae_decoder bundle computes).  Wrap a raw decoder with `ScaledDecoder`.
public protocol DecoderRunner: AnyObject {
    func decode(_ latents: Tensor) throws -> Tensor
}

/// A `DecoderRunner` from a raw VAE decoder (latents / scaling factor -> about [-1, 1]).
/// `raw` is `@Sendable` (nonisolated): the pipeline calls it off the main actor.
public final class ScaledDecoder: DecoderRunner {
    public let scalingFactor: Double
    public let raw: @Sendable (Tensor) throws -> Tensor

    public init(scalingFactor: Double, raw: @escaping @Sendable (Tensor) throws -> Tensor) {
        self.scalingFactor = scalingFactor
        self.raw = raw
    }

    public func decode(_ latents: Tensor) throws -> Tensor {
        ImagePostprocess.unitRange(try raw(ImagePostprocess.decoderInput(latents, scalingFactor: scalingFactor)))
    }
}

/// The runners one pipeline uses.  `vision` is needed for understanding and editing only.
public struct ModelRunners {
    public var llm: LanguageModelRunner
    public var vision: VisionRunner?
    public var mcp: ConditioningRunner
    public var dit: DenoiserRunner
    public var vae: DecoderRunner

    public init(llm: LanguageModelRunner, vision: VisionRunner?, mcp: ConditioningRunner,
                dit: DenoiserRunner, vae: DecoderRunner) {
        self.llm = llm; self.vision = vision; self.mcp = mcp; self.dit = dit; self.vae = vae
    }
}
