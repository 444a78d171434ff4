// A whole SwiftUI screen: type a prompt, watch the steps, see the image, cancel.  SwiftUI
// exists on Apple's systems only, so on Linux the typecheck script compiles everything here
// except the view itself (inside `#if canImport(SwiftUI)`); its view model, GenerationModel in
// Generate.swift, is type-checked.
#if canImport(SwiftUI)
import CoreGraphics
import MobileO
import SwiftUI

@available(iOS 18.0, macOS 15.0, *)
struct GenerateScreen: View {
    @State private var model: GenerationModel  // Generate.swift: the engine calls, progress, cancel
    @State private var prompt = "a red cup on a wooden table"

    /// `engine`: GenerateExample.makeEngine(export:) once, at app start.
    init(engine: MobileOEngine) { _model = State(initialValue: GenerationModel(engine: engine)) }

    var body: some View {
        VStack(spacing: 16) {
            TextField("Prompt", text: $prompt).textFieldStyle(.roundedBorder)
            if let image = model.image {
                Image(decorative: image, scale: 1).resizable().scaledToFit()
            } else if model.running {
                ProgressView(value: model.fraction)
            }
            if let error = model.error { Text(error).foregroundStyle(.secondary) }
            HStack {
                Button("Generate") { model.start(prompt) }.disabled(model.running || prompt.isEmpty)
                Button("Cancel", role: .cancel) { model.cancel() }.disabled(!model.running)
            }
        }
        .padding()
    }
}
#endif
