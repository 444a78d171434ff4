import XCTest
@testable import MobileO

struct SamplerGolden: Decodable {
    struct Schedule: Decodable { var steps: Int; var timesteps: [Double]; var sigmas: [Float] }
    struct Trajectory: Decodable { var steps: Int; var shape: [Int]; var initial: [Float]; var latents: [[Float]] }
    var config: SchedulerConfig
    var schedules: [String: [Schedule]]
    var trajectories: [String: Trajectory]
}

/// The fixed fake denoiser of the golden trajectories: 0.5 cos(t / 1000) x - 0.2 sin(x).
func fakeVelocity(_ x: [Float], _ t: Double) -> [Float] {
    let a = Float(0.5 * Foundation.cos(t / 1000))
    return x.map { a * $0 - Float(0.2) * Foundation.sin($0) }
}

final class SamplerTests: XCTestCase {
    func makeSampler(_ kind: String, _ config: SchedulerConfig, _ steps: Int) throws -> any Sampler {
        try Samplers.make(type: kind, config: config, steps: steps)
    }

    /// The golden kinds are the manifest types of Python's sampler table (weights/core/samplers.py).
    /// Swift implements a subset of it -- at least the manifest's default, which ManifestTests
    /// builds -- and each one it implements matches Python's schedules and trajectories below.
    func testImplementsOnlySamplersOfThePythonTable() throws {
        let g = try Golden.load(SamplerGolden.self, "sampler.json")
        XCTAssertTrue(Set(Samplers.byType.keys).isSubset(of: g.schedules.keys),
                      "Swift samplers \(Samplers.byType.keys.sorted()) outside the table's \(g.schedules.keys.sorted())")
        XCTAssertEqual(Set(g.trajectories.keys), Set(g.schedules.keys))
        XCTAssertThrowsError(try Samplers.make(type: "ddim", config: g.config, steps: 2)) { e in
            XCTAssertTrue("\(e)".contains("scheduler type 'ddim' is unknown"), "\(e)")
        }
    }

    func testSchedulesMatchPython() throws {
        let g = try Golden.load(SamplerGolden.self, "sampler.json")
        for (kind, schedules) in g.schedules where Samplers.byType[kind] != nil {
            for s in schedules {
                let sampler = try makeSampler(kind, g.config, s.steps)
                XCTAssertEqual(sampler.timesteps.count, s.timesteps.count, "\(kind) \(s.steps)")
                for (a, b) in zip(sampler.timesteps, s.timesteps) {
                    XCTAssertEqual(a, b, accuracy: 1e-9 * max(1, abs(b)), "\(kind) \(s.steps) steps: timesteps")
                }
                XCTAssertEqual(sampler.sigmas.count, s.steps + 1)
                XCTAssertLessThanOrEqual(maxAbsDiff(sampler.sigmas, s.sigmas), 1e-7, "\(kind) \(s.steps) steps: sigmas")
            }
        }
    }

    func testDPMSolverTimestepsAreDiffusers() throws {
        // docs/model-facts.md section 3 lists diffusers' 20-step timesteps; the golden vectors carry them too
        let g = try Golden.load(SamplerGolden.self, "sampler.json")
        let s = try FlowDPMSolver(config: g.config, steps: 20)
        XCTAssertEqual(s.timesteps.first, 999)
        XCTAssertEqual(s.timesteps.last, 136)
        XCTAssertEqual(s.sigmas.last, 0)
    }

    func testTrajectoriesMatchPythonWithin1e5() throws {
        let g = try Golden.load(SamplerGolden.self, "sampler.json")
        for (kind, traj) in g.trajectories where Samplers.byType[kind] != nil {
            let sampler = try makeSampler(kind, g.config, traj.steps)
            var x = traj.initial
            var worst: Float = 0
            for (i, t) in sampler.timesteps.enumerated() {
                x = try sampler.step(modelOutput: fakeVelocity(x, t), sample: x, index: i)
                worst = max(worst, maxAbsDiff(x, traj.latents[i]))
            }
            XCTAssertLessThanOrEqual(worst, 1e-5, "\(kind): max |swift - python| over \(traj.steps) steps")
            print("sampler \(kind): max |swift - python| over \(traj.steps) steps = \(worst)")
        }
    }

    func testCFG() {
        XCTAssertEqual(classifierFreeGuidance(uncond: [1, 2], cond: [3, 0], scale: 1.5), [4, -1])
    }

    func testRejectsBadInput() throws {
        XCTAssertThrowsError(try FlowDPMSolver(config: SchedulerConfig(), steps: 0))
        XCTAssertThrowsError(try FlowDPMSolver(config: SchedulerConfig(useFlowSigmas: false), steps: 20)) { e in
            XCTAssertTrue("\(e)".contains("use_flow_sigmas"), "\(e)")
        }
        XCTAssertThrowsError(try FlowDPMSolver(config: SchedulerConfig(solverOrder: 3), steps: 20))
        let s = try FlowDPMSolver(config: SchedulerConfig(), steps: 5)
        _ = try s.step(modelOutput: [0], sample: [1], index: 0)
        XCTAssertThrowsError(try s.step(modelOutput: [0], sample: [1], index: 3)) { e in
            XCTAssertTrue("\(e)".contains("in order"), "\(e)")
        }
        XCTAssertThrowsError(try s.step(modelOutput: [0, 1], sample: [1], index: 1))
    }
}
