import Foundation

/// One task at a time, in call order, with cancellation seen at once by a waiting task.
///
/// `acquire()` returns when the caller is at the front; a Task cancelled while it waits is
/// removed from the queue and throws `MobileOError.cancelled` immediately (not when it would
/// have reached the front).  `release()` hands the turn to the next waiter.  The state is
/// behind a lock, so it works from actors and from nonisolated code alike.
final class TaskQueue: @unchecked Sendable {
    private let lock = NSLock()
    private var busy = false
    private var nextID: UInt64 = 0
    private var waiting: [(id: UInt64, continuation: CheckedContinuation<Void, Error>)] = []

    /// The number of tasks waiting for their turn (not counting the running one).
    var waitingCount: Int { lock.withLock { waiting.count } }

    /// Wait for this task's turn (FIFO); throws `MobileOError.cancelled` at once when the
    /// calling Task is cancelled before or while waiting.
    func acquire() async throws {
        if Task.isCancelled { throw MobileOError.cancelled }
        let id: UInt64? = lock.withLock {
            if !busy { busy = true; return nil }
            nextID += 1
            return nextID
        }
        guard let id else { return }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
                let cancelled: Bool = lock.withLock {
                    if Task.isCancelled { return true }
                    waiting.append((id, c))
                    return false
                }
                if cancelled { c.resume(throwing: MobileOError.cancelled) }
            }
        } onCancel: {
            let c: CheckedContinuation<Void, Error>? = lock.withLock {
                guard let i = waiting.firstIndex(where: { $0.id == id }) else { return nil }
                return waiting.remove(at: i).continuation
            }
            c?.resume(throwing: MobileOError.cancelled)
        }
    }

    /// End this task's turn: the next waiter (if any) runs, handed over with the queue busy.
    func release() {
        let next: CheckedContinuation<Void, Error>? = lock.withLock {
            if waiting.isEmpty { busy = false; return nil }
            return waiting.removeFirst().continuation
        }
        next?.resume()
    }

    /// `body` alone: acquire, run, release (also when `body` throws).
    func run<T>(isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> T) async throws -> T {
        try await acquire()
        defer { release() }
        return try await body()
    }
}

/// Map Swift's `CancellationError` (thrown by cancelled awaits, e.g. `Task.sleep` or Core ML's
/// async prediction) to the package's `MobileOError.cancelled`.
func cancellable<T>(isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch is CancellationError {
        throw MobileOError.cancelled
    }
}
