import Foundation

/// Every error the package throws: one line saying what is wrong, where, and the fix.
public struct MobileOError: Error, CustomStringConvertible, LocalizedError, Equatable {
    /// What failed: the manifest, the tokenizer, a sampler, the pipeline's checks, a model runner,
    /// or nothing (the caller cancelled).
    public enum Kind: String, Sendable { case manifest, tokenizer, sampler, pipeline, runner, cancelled }
    /// What failed.
    public let kind: Kind
    /// One line: what is wrong, then "Fix: ..." where there is one.
    public let message: String

    /// An error of `kind`; `fix` is appended as "Fix: ...".
    public init(_ kind: Kind, _ message: String, fix: String? = nil) {
        self.kind = kind
        self.message = fix.map { "\(message) Fix: \($0)" } ?? message
    }

    /// "kind: message".
    public var description: String { "\(kind.rawValue): \(message)" }
    /// The description (for `localizedDescription`).
    public var errorDescription: String? { description }

    /// The caller cancelled the task (its Task, a stream's end, or a progress handler).
    public static let cancelled = MobileOError(.cancelled, "cancelled by the caller.")
}
