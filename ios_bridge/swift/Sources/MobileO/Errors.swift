import Foundation

/// Every error the package throws: one line saying what is wrong, where, and the fix.
public struct MobileOError: Error, CustomStringConvertible, LocalizedError, Equatable {
    public enum Kind: String, Sendable { case manifest, tokenizer, sampler, pipeline, runner, cancelled }
    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String, fix: String? = nil) {
        self.kind = kind
        self.message = fix.map { "\(message) Fix: \($0)" } ?? message
    }

    public var description: String { "\(kind.rawValue): \(message)" }
    public var errorDescription: String? { description }

    public static let cancelled = MobileOError(.cancelled, "cancelled by the caller.")
}
