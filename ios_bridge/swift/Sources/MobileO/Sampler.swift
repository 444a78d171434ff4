import Foundation

/// diffusers `DPMSolverMultistepScheduler` config (field names as in scheduler_config.json).
public struct SchedulerConfig: Codable, Equatable, Sendable {
    /// `num_train_timesteps`: the training schedule's length (1000).
    public var numTrainTimesteps: Int
    /// `solver_order`: 1 or 2.
    public var solverOrder: Int
    /// `algorithm_type`: only "dpmsolver++".
    public var algorithmType: String
    /// `solver_type`: "midpoint" or "heun".
    public var solverType: String
    /// `prediction_type`: only "flow_prediction".
    public var predictionType: String
    /// `use_flow_sigmas`: must be true (a flow-matching model).
    public var useFlowSigmas: Bool
    /// `flow_shift`: the sigma shift.
    public var flowShift: Double
    /// `final_sigmas_type`: only "zero".
    public var finalSigmasType: String
    /// `lower_order_final`: first-order last step for short schedules.
    public var lowerOrderFinal: Bool
    /// `euler_at_final`: a first-order last step always.
    public var eulerAtFinal: Bool
    /// `timestep_spacing` (recorded; the flow schedule is linspace).
    public var timestepSpacing: String
    /// `steps_offset` (recorded).
    public var stepsOffset: Int
    /// `thresholding`: unsupported when true.
    public var thresholding: Bool?
    /// `use_karras_sigmas`: unsupported when true.
    public var useKarrasSigmas: Bool?
    /// `use_exponential_sigmas`: unsupported when true.
    public var useExponentialSigmas: Bool?
    /// `use_beta_sigmas`: unsupported when true.
    public var useBetaSigmas: Bool?
    /// `use_lu_lambdas`: unsupported when true.
    public var useLuLambdas: Bool?
    /// `use_dynamic_shifting`: unsupported when true.
    public var useDynamicShifting: Bool?

    enum CodingKeys: String, CodingKey {
        case numTrainTimesteps = "num_train_timesteps", solverOrder = "solver_order"
        case algorithmType = "algorithm_type", solverType = "solver_type", predictionType = "prediction_type"
        case useFlowSigmas = "use_flow_sigmas", flowShift = "flow_shift", finalSigmasType = "final_sigmas_type"
        case lowerOrderFinal = "lower_order_final", eulerAtFinal = "euler_at_final"
        case timestepSpacing = "timestep_spacing", stepsOffset = "steps_offset", thresholding
        case useKarrasSigmas = "use_karras_sigmas", useExponentialSigmas = "use_exponential_sigmas"
        case useBetaSigmas = "use_beta_sigmas", useLuLambdas = "use_lu_lambdas"
        case useDynamicShifting = "use_dynamic_shifting"
    }

    /// A config; the defaults are Mobile-O's.
    public init(numTrainTimesteps: Int = 1000, solverOrder: Int = 2, algorithmType: String = "dpmsolver++",
                solverType: String = "midpoint", predictionType: String = "flow_prediction",
                useFlowSigmas: Bool = true, flowShift: Double = 3.0, finalSigmasType: String = "zero",
                lowerOrderFinal: Bool = true, eulerAtFinal: Bool = false, timestepSpacing: String = "linspace",
                stepsOffset: Int = 0) {
        self.numTrainTimesteps = numTrainTimesteps; self.solverOrder = solverOrder
        self.algorithmType = algorithmType; self.solverType = solverType; self.predictionType = predictionType
        self.useFlowSigmas = useFlowSigmas; self.flowShift = flowShift; self.finalSigmasType = finalSigmasType
        self.lowerOrderFinal = lowerOrderFinal; self.eulerAtFinal = eulerAtFinal
        self.timestepSpacing = timestepSpacing; self.stepsOffset = stepsOffset
    }

    /// Why this package cannot run the config, or nil when it can.
    func unsupported() -> String? {
        if !useFlowSigmas { return "use_flow_sigmas must be true (flow-matching model)" }
        if predictionType != "flow_prediction" { return "prediction_type '\(predictionType)' is not flow_prediction" }
        if numTrainTimesteps < 1 { return "num_train_timesteps must be >= 1" }
        if !(flowShift > 0) { return "flow_shift must be > 0" }
        if finalSigmasType != "zero" { return "final_sigmas_type '\(finalSigmasType)' is not supported (only 'zero')" }
        for (flag, name) in [(thresholding, "thresholding"), (useKarrasSigmas, "use_karras_sigmas"),
                             (useExponentialSigmas, "use_exponential_sigmas"), (useBetaSigmas, "use_beta_sigmas"),
                             (useLuLambdas, "use_lu_lambdas"), (useDynamicShifting, "use_dynamic_shifting")] where flag == true {
            return "\(name) is not supported"
        }
        return nil
    }

    /// diffusers' flow sigmas for `steps` steps (descending, float32, the final 0 appended)
    /// and the integer timesteps handed to the denoiser (`int64(sigma * num_train_timesteps)`).
    public func flowSchedule(steps: Int) -> (timesteps: [Double], sigmas: [Float]) {
        let n = Double(numTrainTimesteps)
        // np.linspace(1, 1/n, steps + 1)
        let start = 1.0, stop = 1.0 / n, delta = (stop - start) / Double(steps)
        var alphas = (0...steps).map { Double($0) * delta + start }
        alphas[steps] = stop
        let shifted = alphas.map { a -> Double in
            let s = 1.0 - a
            return flowShift * s / (1 + (flowShift - 1) * s)
        }
        let sigmas64 = Array(shifted.reversed().dropLast())
        let timesteps = sigmas64.map { ($0 * n).rounded(.towardZero) }
        return (timesteps, sigmas64.map { Float($0) } + [0])
    }
}

/// A sampler over `timesteps.count` steps: call `step` with i = 0, 1, ... in order.
public protocol Sampler: AnyObject {
    /// Timesteps handed to the denoiser, one per step.
    var timesteps: [Double] { get }
    /// Noise levels, one per step plus the final one.
    var sigmas: [Float] { get }
    /// One step: the model's (guided) velocity at `sample` -> the next sample.
    func step(modelOutput: [Float], sample: [Float], index: Int) throws -> [Float]
}

extension Sampler {
    /// The number of steps.
    public var steps: Int { timesteps.count }

    /// `step` over tensors of equal shapes.
    public func step(modelOutput: Tensor, sample: Tensor, index: Int) throws -> Tensor {
        guard modelOutput.shape == sample.shape else {
            throw MobileOError(.sampler, "model output shape \(modelOutput.shape) differs from the latents' \(sample.shape).")
        }
        return Tensor(uncheckedShape: sample.shape, data: try step(modelOutput: modelOutput.data, sample: sample.data, index: index))
    }
}

/// The samplers this package implements, by the manifest's `pipeline.scheduler.type` (the
/// sampler table is Python's `weights/core/samplers.py`; the manifest names its default, and
/// `GenerateOptions.sampler` may name another).  A new one is its class below and one line
/// here; the golden tests check every entry against Python's schedules and trajectories.
public enum Samplers {
    /// Builds a sampler from the config and the step count.
    public typealias Make = @Sendable (SchedulerConfig, Int) throws -> any Sampler

    /// The samplers by manifest type.
    public static let byType: [String: Make] = [
        FlowDPMSolver.typeName: { try FlowDPMSolver(config: $0, steps: $1) },
        FlowEuler.typeName: { try FlowEuler(config: $0, steps: $1) },
    ]

    /// The sampler of manifest type `type` over `steps` steps.
    public static func make(type: String, config: SchedulerConfig, steps: Int) throws -> any Sampler {
        guard let make = byType[type] else {
            throw MobileOError(.sampler, "scheduler type '\(type)' is unknown (known: \(byType.keys.sorted().joined(separator: ", "))).")
        }
        return try make(config, steps)
    }
}

/// `u + g * (c - u)` over the common length of `uncond` and `cond` (equal in the pipeline).
public func classifierFreeGuidance(uncond: [Float], cond: [Float], scale: Float) -> [Float] {
    zip(uncond, cond).map { u, c in u + scale * (c - u) }
}

/// DPM-Solver++ (multistep, order <= 2, midpoint or heun) on flow sigmas with a final
/// sigma of 0, exactly as diffusers' `DPMSolverMultistepScheduler` with
/// `use_flow_sigmas=True, prediction_type="flow_prediction"`.
public final class FlowDPMSolver: Sampler {
    /// The manifest's `pipeline.scheduler.type` of this sampler.
    public static let typeName = "flow_dpm_solver_multistep"
    /// The scheduler config.
    public let config: SchedulerConfig
    /// Timesteps handed to the denoiser (integers, as diffusers').
    public let timesteps: [Double]
    /// Noise levels, one per step plus the final 0.
    public let sigmas: [Float]
    private var previous: [Float]?  // the last data prediction (x0)
    private var nextIndex = 0

    /// A sampler over `steps` steps; throws when the config is one this package cannot run.
    public init(config: SchedulerConfig, steps: Int) throws {
        if let why = config.unsupported() { throw MobileOError(.sampler, "\(why).") }
        guard config.algorithmType == "dpmsolver++" else {
            throw MobileOError(.sampler, "algorithm_type '\(config.algorithmType)' is not supported (only dpmsolver++).")
        }
        guard (1...2).contains(config.solverOrder) else {
            throw MobileOError(.sampler, "solver_order \(config.solverOrder) is not supported (1 or 2).")
        }
        guard ["midpoint", "heun"].contains(config.solverType) else {
            throw MobileOError(.sampler, "solver_type '\(config.solverType)' is not supported (midpoint or heun).")
        }
        guard steps >= 1 else { throw MobileOError(.sampler, "steps must be >= 1, got \(steps).") }
        self.config = config
        (timesteps, sigmas) = config.flowSchedule(steps: steps)
    }

    /// lambda = log(alpha) - log(sigma) with alpha = 1 - sigma (+inf at sigma 0).
    private static func lambda(_ s: Float) -> Double {
        let sigma = Double(s)
        return sigma > 0 ? Foundation.log(1 - sigma) - Foundation.log(sigma) : .infinity
    }

    /// prev = a * sample + b * x0 + c * (x0 - previous x0) / r0, with the step's order.
    private func coefficients(_ i: Int) -> (order: Int, a: Float, b: Float, c: Float, invR0: Float) {
        let n = timesteps.count
        let lowerOrderFinal = i == n - 1 && (config.eulerAtFinal || (config.lowerOrderFinal && n < 15)
                                               || config.finalSigmasType == "zero")
        let s0 = Double(sigmas[i]), t = Double(sigmas[i + 1])
        let h = Self.lambda(sigmas[i + 1]) - Self.lambda(sigmas[i])
        let alphaT = 1 - t
        let em1 = Foundation.exp(-h) - 1  // -1 when the next sigma is 0
        let a = Float(t / s0), b = Float(-alphaT * em1)
        if config.solverOrder == 1 || i == 0 || lowerOrderFinal { return (1, a, b, 0, 1) }
        let r0 = (Self.lambda(sigmas[i]) - Self.lambda(sigmas[i - 1])) / h
        let c = config.solverType == "midpoint" ? -0.5 * alphaT * em1 : alphaT * (em1 / h + 1)
        return (2, a, b, Float(c), Float(1 / r0))
    }

    /// One DPM-Solver++ step; steps run in order from 0 (step 0 restarts the history).
    public func step(modelOutput: [Float], sample: [Float], index i: Int) throws -> [Float] {
        let n = timesteps.count
        guard i >= 0, i < n else { throw MobileOError(.sampler, "step index \(i) is outside 0..<\(n).") }
        guard modelOutput.count == sample.count else {
            throw MobileOError(.sampler, "model output has \(modelOutput.count) values, the sample \(sample.count).")
        }
        if i == 0 { previous = nil }
        guard i == nextIndex || i == 0 else {
            throw MobileOError(.sampler, "steps must run in order: expected step \(nextIndex), got \(i).")
        }
        let k = coefficients(i)
        let sigma = sigmas[i]
        let x0 = zip(sample, modelOutput).map { x, v in x - sigma * v }  // data prediction
        var out: [Float]
        if k.order == 1 {
            out = zip(sample, x0).map { x, d in k.a * x + k.b * d }
        } else {
            guard let m1 = previous, m1.count == sample.count else {
                throw MobileOError(.sampler, "step \(i) needs the previous step's data prediction of the same size.",
                                   fix: "run the steps in order from 0 on latents of one shape.")
            }
            out = (0..<sample.count).map { j in
                let d1 = k.invR0 * (x0[j] - m1[j])
                return k.a * sample[j] + k.b * x0[j] + k.c * d1
            }
        }
        previous = x0
        nextIndex = i + 1
        return out
    }
}

/// Flow-matching Euler as diffusers' `FlowMatchEulerDiscreteScheduler(shift: flow_shift)`:
/// its own sigma schedule (linear in shifted training time, float timesteps), then
/// x <- x + (sigma[i+1] - sigma[i]) * v.
public final class FlowEuler: Sampler {
    /// The manifest's `pipeline.scheduler.type` of this sampler.
    public static let typeName = "flow_euler"
    /// Timesteps handed to the denoiser (float, as diffusers').
    public let timesteps: [Double]
    /// Noise levels, one per step plus the final 0.
    public let sigmas: [Float]

    /// A sampler over `steps` steps; `shift` overrides the config's `flow_shift`.
    public init(config: SchedulerConfig, steps: Int, shift: Double? = nil) throws {
        if let why = config.unsupported() { throw MobileOError(.sampler, "\(why).") }
        guard steps >= 1 else { throw MobileOError(.sampler, "steps must be >= 1, got \(steps).") }
        let n = config.numTrainTimesteps, shift = shift ?? config.flowShift
        func shifted(_ s: Double) -> Double { shift * s / (1 + (shift - 1) * s) }
        // training sigmas are float32 in diffusers: first = shifted(1) = 1, last = shifted(1/n)
        let s32 = Float(1) / Float(n), f32 = Float(shift)
        let last = Double(f32 * s32 / (1 + (f32 - 1) * s32))
        let first = 1.0 * Double(n), end = last * Double(n)
        var ts = (0..<steps).map { first + Double($0) * (steps > 1 ? (end - first) / Double(steps - 1) : 0) }
        if steps > 1 { ts[steps - 1] = end }
        let sig32 = ts.map { Float(shifted($0 / Double(n))) }
        timesteps = sig32.map { Double($0 * Float(n)) }
        sigmas = sig32 + [0]
    }

    /// One Euler step: x + (sigma[i+1] - sigma[i]) v.
    public func step(modelOutput: [Float], sample: [Float], index i: Int) throws -> [Float] {
        guard i >= 0, i < timesteps.count else {
            throw MobileOError(.sampler, "step index \(i) is outside 0..<\(timesteps.count).")
        }
        guard modelOutput.count == sample.count else {
            throw MobileOError(.sampler, "model output has \(modelOutput.count) values, the sample \(sample.count).")
        }
        let dt = Float(Double(sigmas[i + 1]) - Double(sigmas[i]))
        return zip(sample, modelOutput).map { x, v in x + dt * v }
    }
}
