import Foundation

// The model-runner protocols the pipeline drives.  `CoreMLRunners` implements them with
// the exported bundles; tests implement them with small deterministic fakes.  Tensors are
// plain row-major arrays in the upstream (PyTorch) layouts noted on each method.
//
// Every call is `async`: a runner is nonisolated and `Sendable`, so the engine's actor is
// free while a model runs (a memory warning or a cancellation is handled during a step, not
// after it), and no cooperative thread is blocked by a prediction.  A runner should honour
// Swift task cancellation during a call where it can (Core ML's async prediction does; a
// fake that sleeps uses `Task.sleep`); the pipeline also checks it between calls.

/// Qwen2 with Mobile-O's prompt handling.
public protocol LanguageModelRunner: AnyObject, Sendable {
    /// The last `count` entries of transformers' `output_hidden_states` for the prompt
    /// (the last one after the final norm), each [L, D] with L = total prompt length.
    func hiddenStates(_ prompt: [PromptSegment], count: Int) async throws -> [Tensor]
    /// Start a new sequence with `prompt`; returns the next-token logits [V].
    func prefill(_ prompt: [PromptSegment]) async throws -> [Float]
    /// Append one token to the current sequence; returns the next-token logits [V].
    func decode(_ token: Int) async throws -> [Float]
}

/// FastViTHD + projector: preprocessed pixels [3, S, S] in [0, 1] -> image embeddings [N, D].
public protocol VisionRunner: AnyObject, Sendable {
    /// Image embeddings [N, D] of preprocessed pixels [3, S, S].
    func imageEmbeddings(_ pixels: Tensor) async throws -> Tensor
}

/// The Mobile Conditioning Projector: `count` hidden states [L, D] -> conditioning [L, caption_channels].
public protocol ConditioningRunner: AnyObject, Sendable {
    /// Conditioning [L, caption_channels] of `count` hidden states [L, D].
    func conditioning(_ hiddenStates: [Tensor]) async throws -> Tensor
}

/// The DiT: latents [B, C, H, W], one timestep for the batch, conditioning [B, L, caption_channels]
/// -> velocity [B, C, H, W].  The pipeline passes B = 2: [unconditional, conditional].
public protocol DenoiserRunner: AnyObject, Sendable {
    /// One DiT evaluation: the velocity [B, C, H, W] at `latents` and `timestep`.
    func velocity(latents: Tensor, timestep: Double, conditioning: Tensor) async throws -> Tensor
}

/// The VAE decoder with Mobile-O's mapping to pixels: the sampler's latents [C, h, w] ->
/// image [3, H, W] in [0, 1] = clamp(decode(latents / scaling_factor) / 2 + 0.5, 0, 1)
/// (what the exported vae_decoder bundle computes).  Wrap a raw decoder with `ScaledDecoder`.
public protocol DecoderRunner: AnyObject, Sendable {
    /// Latents [C, h, w] -> image [3, H, W] in [0, 1].
    func decode(_ latents: Tensor) async throws -> Tensor
}

/// A `DecoderRunner` from a raw VAE decoder (latents / scaling factor -> about [-1, 1]).
/// `raw` is `@Sendable` (nonisolated): the pipeline calls it off the main actor.
public final class ScaledDecoder: DecoderRunner {
    /// The VAE's `scaling_factor` (latents are divided by it before decoding).
    public let scalingFactor: Double
    /// The raw decoder: scaled latents [C, h, w] -> about [-1, 1], [3, H, W].
    public let raw: @Sendable (Tensor) async throws -> Tensor

    /// Wrap `raw` with the scaling before and the mapping to [0, 1] after it.
    public init(scalingFactor: Double, raw: @escaping @Sendable (Tensor) async throws -> Tensor) {
        self.scalingFactor = scalingFactor
        self.raw = raw
    }

    /// clamp(raw(latents / scalingFactor) / 2 + 0.5, 0, 1).
    public func decode(_ latents: Tensor) async throws -> Tensor {
        ImagePostprocess.unitRange(try await raw(ImagePostprocess.decoderInput(latents, scalingFactor: scalingFactor)))
    }
}

/// The runners one pipeline uses.  `vision` is needed for understanding and editing only.
public struct ModelRunners: Sendable {
    /// The language model (hidden states, prefill, decode).
    public var llm: LanguageModelRunner
    /// The vision encoder; nil when the export has none (generation and chat only).
    public var vision: VisionRunner?
    /// The Mobile Conditioning Projector.
    public var mcp: ConditioningRunner
    /// The diffusion transformer.
    public var dit: DenoiserRunner
    /// The VAE decoder, mapped to [0, 1].
    public var vae: DecoderRunner

    /// The runners of one pipeline.
    public init(llm: LanguageModelRunner, vision: VisionRunner?, mcp: ConditioningRunner,
                dit: DenoiserRunner, vae: DecoderRunner) {
        self.llm = llm; self.vision = vision; self.mcp = mcp; self.dit = dit; self.vae = vae
    }
}
