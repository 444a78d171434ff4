// A whole SwiftUI screen: type a prompt, watch the steps, see the image, cancel.  SwiftUI
// exists on Apple's systems only, so on Linux the typecheck script compiles everything here
// except the view itself (inside `#if canImport(SwiftUI)`); the engine calls it makes are the
// ones GenerationModel in Generate.swift makes, which are type-checked.
#if canImport(SwiftUI)
import CoreGraphics
import MobileO
import SwiftUI

@available(iOS 18.0, macOS 15.0, *)
struct GenerateScreen: View {
    let engine: MobileOEngine  // GenerateExample.makeEngine(export:) once, at app start
    @State private var prompt = "a red cup on a wooden table"
    @State private var fraction = 0.0
    @State private var image: CGImage?
    @State private var message: String?
    @State private var work: Task<Void, Never>?

    var body: some View {
        VStack(spacing: 16) {
            TextField("Prompt", text: $prompt).textFieldStyle(.roundedBorder)
            if let image {
                Image(decorative: image, scale: 1).resizable().scaledToFit()
            } else if work != nil {
                ProgressView(value: fraction)
            }
            if let message { Text(message).foregroundStyle(.secondary) }
            HStack {
                Button("Generate") { start() }.disabled(work != nil || prompt.isEmpty)
                Button("Cancel", role: .cancel) { work?.cancel() }.disabled(work == nil)
            }
        }
        .padding()
    }

    private func start() {
        image = nil
        message = nil
        fraction = 0
        work = Task {
            defer { work = nil }
            do {
                for try await event in engine.generationEvents(prompt: prompt, options: .init(seed: 42)) {
                    switch event {
                    case .progress(.step(let i, let n, _)): fraction = Double(i + 1) / Double(n)
                    case .progress: break
                    case .finished(let out): image = out.image.cgImage()
                    }
                }
                if Task.isCancelled { message = "cancelled" }  // a cancelled stream just ends
            } catch {
                message = "\(error)"
            }
        }
    }
}
#endif
