import Foundation

// The options, progress events and results of the tasks, shared by `MobileOPipeline` and
// `MobileOEngine` (both also name them as nested typealiases).  Every type has a public
// memberwise initialiser, so an app can build previews and mocks of them.

/// The image samplers this package implements (the manifest's `pipeline.scheduler.type`).
public enum SamplerChoice: String, Sendable, CaseIterable, Hashable, Codable {
    /// DPM-Solver++ multistep on flow sigmas (Mobile-O's default).
    case dpmSolver = "flow_dpm_solver_multistep"
    /// Flow-matching Euler.
    case euler = "flow_euler"
}

/// Options of an image task (generate, edit).  nil fields take the manifest's defaults.
public struct ImageOptions: Sendable, Equatable {
    /// Denoising steps; nil: the manifest default.
    public var steps: Int?
    /// Classifier-free guidance scale; nil: the manifest default; 1 runs the conditional branch only.
    public var guidance: Double?
    /// Seed of the initial noise (`GaussianNoise`), used when `initialLatents` is nil.
    public var seed: UInt64
    /// Initial latents [C, H, W], to reproduce a Python run exactly (then `seed` is not used).
    public var initialLatents: Tensor?
    /// The sampler; nil: the manifest's scheduler type.
    public var sampler: SamplerChoice?
    /// Emit a `MobileOProgress.preview` every this many steps (0: none).  A preview is a cheap look
    /// at the latents (`LatentPreview`), not a VAE decode.
    public var previewEvery: Int

    /// Options with the manifest's defaults for every nil field.
    public init(steps: Int? = nil, guidance: Double? = nil, seed: UInt64 = 0, initialLatents: Tensor? = nil,
                sampler: SamplerChoice? = nil, previewEvery: Int = 0) {
        self.steps = steps; self.guidance = guidance; self.seed = seed
        self.initialLatents = initialLatents; self.sampler = sampler; self.previewEvery = previewEvery
    }
}

/// Options of a text task (understand, chat).  nil fields take the manifest's defaults.
///
/// Decoding follows mlx-lm's `make_sampler` (what the Python side uses), see `TokenSampler`:
/// temperature 0 is greedy; otherwise top-p, then min-p, then top-k filter the log-probabilities
/// at temperature 1, and the token is drawn from softmax(kept logits / temperature).
public struct TextOptions: Sendable, Equatable {
    /// The most tokens to generate; nil: the manifest default.
    public var maxNewTokens: Int?
    /// Sampling temperature; nil: the manifest default; 0 = greedy.
    public var temperature: Double?
    /// Nucleus filter in (0, 1]; nil: the manifest default; 1 = off.
    public var topP: Double?
    /// Keep the k most likely tokens; nil: the manifest default; 0 = off.
    public var topK: Int?
    /// Drop tokens below minP x the top token's probability, in [0, 1); 0 = off.
    public var minP: Double
    /// Seed of the token draws.
    public var seed: UInt64

    /// Options with the manifest's defaults for every nil field.
    public init(maxNewTokens: Int? = nil, temperature: Double? = nil, topP: Double? = nil, topK: Int? = nil,
                minP: Double = 0, seed: UInt64 = 0) {
        self.maxNewTokens = maxNewTokens; self.temperature = temperature; self.topP = topP; self.topK = topK
        self.minP = minP; self.seed = seed
    }
}

/// A progress event of a task.
public enum MobileOProgress: Sendable {
    /// The prompt is encoded: its length in tokens, image tokens included.
    case encoded(promptTokens: Int)
    /// Denoising step `index` (0-based) of `of` is done; `latents` [C, H, W] after it.
    case step(index: Int, of: Int, latents: Tensor)
    /// A cheap preview of the latents after step `index` (`ImageOptions.previewEvery`).
    case preview(index: Int, image: RGBImage)
    /// The VAE has decoded the image.
    case decoded
    /// A model starts loading.
    case loading(MobileOComponent)
    /// A model's bundle is being compiled (first use only; the result is cached by sha256).
    case compiling(MobileOComponent)
    /// A model is loaded.
    case loaded(MobileOComponent)
    /// A token was chosen; `text` holds the new characters (empty while a character is incomplete).
    case token(id: Int, text: String)
}

/// Why an answer ended.
public enum FinishReason: String, Sendable, Hashable, Codable {
    /// The model wrote its end-of-sequence token.
    case stop
    /// `maxNewTokens` tokens were generated.
    case length
    /// The caller stopped it (a progress handler returned false); the answer holds the tokens so far.
    case cancelled
}

/// The result of an image task.
public struct GeneratedImage: Sendable {
    /// The image, 8 bits per channel.
    public var image: RGBImage
    /// The decoded image [3, H, W] in [0, 1] before rounding.
    public var unit: Tensor
    /// The final latents [C, H, W].
    public var latents: Tensor
    /// The prompt's token ids, the image token at every image position (mlx_model's prompt_ids).
    public var promptIds: [Int]
    /// The seed of the initial noise; nil when the caller passed `initialLatents`.
    public var seed: UInt64?
    /// The denoising steps run.
    public var steps: Int
    /// The guidance scale used.
    public var guidance: Double

    /// A result built by hand (previews, mocks).
    public init(image: RGBImage, unit: Tensor, latents: Tensor, promptIds: [Int], seed: UInt64? = nil,
                steps: Int = 0, guidance: Double = 1) {
        self.image = image; self.unit = unit; self.latents = latents; self.promptIds = promptIds
        self.seed = seed; self.steps = steps; self.guidance = guidance
    }
}

/// The result of a text task.
public struct Answer: Sendable, Equatable {
    /// The answer: special tokens skipped, surrounding whitespace stripped (Mobile-O's).
    public var text: String
    /// The generated token ids (without the end-of-sequence token).
    public var ids: [Int]
    /// The prompt's token ids, as `GeneratedImage.promptIds`.
    public var promptIds: [Int]
    /// Why the answer ended.
    public var finishReason: FinishReason

    /// A result built by hand (previews, mocks).
    public init(text: String, ids: [Int] = [], promptIds: [Int] = [], finishReason: FinishReason = .stop) {
        self.text = text; self.ids = ids; self.promptIds = promptIds; self.finishReason = finishReason
    }
}

extension MobileOPipeline {
    /// See the top-level `ImageOptions`.
    public typealias ImageOptions = MobileO.ImageOptions
    /// See the top-level `TextOptions`.
    public typealias TextOptions = MobileO.TextOptions
    /// See the top-level `MobileOProgress`.
    public typealias Progress = MobileO.MobileOProgress
    /// See the top-level `GeneratedImage`.
    public typealias GeneratedImage = MobileO.GeneratedImage
    /// See the top-level `Answer`.
    public typealias Answer = MobileO.Answer
}

/// A cheap look at latents during denoising (no VAE): the first three latent channels,
/// each scaled to [0, 1] by its own range, upsampled `scale` times (nearest).
public enum LatentPreview {
    /// The preview of latents [C, H, W] (C >= 1; fewer than 3 channels repeat).
    public static func image(_ latents: Tensor, scale: Int = 4) -> RGBImage {
        let c = latents.shape[0], h = latents.shape[1], w = latents.shape[2], s = max(1, scale)
        var pixels = [UInt8](repeating: 0, count: h * s * w * s * 3)
        for ch in 0..<3 {
            let plane = latents.data[(ch % c) * h * w..<((ch % c) + 1) * h * w]
            let lo = plane.min() ?? 0, hi = plane.max() ?? 1, span = hi > lo ? hi - lo : 1
            for y in 0..<(h * s) {
                for x in 0..<(w * s) {
                    let v = (plane[plane.startIndex + (y / s) * w + x / s] - lo) / span
                    pixels[(y * w * s + x) * 3 + ch] = UInt8((v * 255).rounded())
                }
            }
        }
        return RGBImage(uncheckedWidth: w * s, height: h * s, pixels: pixels)
    }
}
