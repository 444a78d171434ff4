import Foundation

/// Bundle hashes exactly as weights/bundles/hashing.py computes them: a file hashes to the
/// sha256 of its bytes; a folder to the sha256 of the `sha256sum`-style listing
/// "<hex>  <relative path>\n" of its regular files, sorted by the UTF-8 bytes of the path.
public enum BundleHash {
    /// The hex sha256 of a file, or of a folder's sorted `sha256sum`-style listing (a bundle).
    public static func sha256(of url: URL) throws -> String {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) else {
            throw MobileOError(.manifest, "\(url.path) does not exist.")
        }
        if !isDir.boolValue { return try fileDigest(url) }
        var listing = ""
        for rel in try files(in: url) {
            listing += "\(try fileDigest(url.appendingPathComponent(rel)))  \(rel)\n"
        }
        return SHA256.hex(Array(listing.utf8))
    }

    /// The size in bytes of a file, or the sum over a folder's regular files.
    public static func bytes(of url: URL) throws -> Int {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) else {
            throw MobileOError(.manifest, "\(url.path) does not exist.")
        }
        if !isDir.boolValue { return try size(url) }
        return try files(in: url).reduce(0) { $0 + (try size(url.appendingPathComponent($1))) }
    }

    /// Relative POSIX paths of the regular files (not symlinks) under a folder, sorted by bytes.
    static func files(in folder: URL) throws -> [String] {
        guard let walker = FileManager.default.enumerator(atPath: folder.path) else { return [] }
        var out = [String]()
        while let rel = walker.nextObject() as? String {
            let attrs = try FileManager.default.attributesOfItem(atPath: folder.appendingPathComponent(rel).path)
            if (attrs[.type] as? FileAttributeType) == .typeRegular { out.append(rel) }
        }
        return out.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    static func size(_ url: URL) throws -> Int {
        let attrs = try FileManager.default.attributesOfItem(atPath: url.path)
        return (attrs[.size] as? NSNumber)?.intValue ?? 0
    }

    static func fileDigest(_ url: URL) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: url.path) else {
            throw MobileOError(.manifest, "\(url.path) cannot be read.")
        }
        defer { try? handle.close() }
        var h = SHA256()
        while true {
            let chunk = handle.readData(ofLength: 1 << 20)
            if chunk.isEmpty { break }
            h.update(Array(chunk))
        }
        return h.finalizeHex()
    }
}

extension Manifest {
    /// Problems with the files the manifest lists under `folder`: one line each, naming the
    /// file (empty when all is well).  `hashes: false` checks existence and sizes only.
    public func fileProblems(in folder: URL, hashes: Bool = true) -> [String] {
        var entries = components.flatMap { c in c.files.map { (c.name, $0) } }
        entries += pipeline.tokenizer.files.map { ("tokenizer", $0) }
        var out = [String]()
        for (what, f) in entries {
            let url = folder.appendingPathComponent(f.file)
            guard FileManager.default.fileExists(atPath: url.path) else {
                out.append("\(url.path): missing (\(what) bundle listed in \(Manifest.fileName))."); continue
            }
            do {
                let size = try BundleHash.bytes(of: url)
                if size != f.bytes {
                    out.append("\(url.path): size is \(size) bytes but \(Manifest.fileName) says \(f.bytes) (\(what))."); continue
                }
                if hashes {
                    let digest = try BundleHash.sha256(of: url)
                    if digest != f.sha256 {
                        out.append("\(url.path): sha256 is \(digest) but \(Manifest.fileName) says \(f.sha256) (\(what): the bundle was modified or corrupted).")
                    }
                }
            } catch {
                out.append("\(url.path): \(error)")
            }
        }
        return out
    }
}

/// A small streaming SHA-256 (FIPS 180-4), so the package needs no CryptoKit.
public struct SHA256 {
    private var h: [UInt32] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
    private var buffer = [UInt8]()
    private var length: UInt64 = 0
    private static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    /// An empty digest.
    public init() {}

    /// The hex sha256 of `data`.
    public static func hex(_ data: [UInt8]) -> String {
        var s = SHA256()
        s.update(data)
        return s.finalizeHex()
    }

    /// Feed more bytes.
    public mutating func update(_ data: [UInt8]) {
        length &+= UInt64(data.count)
        buffer += data
        var start = 0
        while buffer.count - start >= 64 {
            block(buffer[start..<start + 64])
            start += 64
        }
        buffer.removeFirst(start)
    }

    /// Finish and return the hex digest.
    public mutating func finalizeHex() -> String {
        let bits = length &* 8
        var tail = buffer + [0x80]
        while tail.count % 64 != 56 { tail.append(0) }
        for i in (0..<8).reversed() { tail.append(UInt8(truncatingIfNeeded: bits >> (UInt64(i) * 8))) }
        var start = 0
        while start < tail.count { block(tail[start..<start + 64]); start += 64 }
        buffer = []
        return h.map { String(format: "%08x", $0) }.joined()
    }

    private mutating func block(_ chunk: ArraySlice<UInt8>) {
        var w = [UInt32](repeating: 0, count: 64)
        let base = chunk.startIndex
        for i in 0..<16 {
            w[i] = UInt32(chunk[base + 4 * i]) << 24 | UInt32(chunk[base + 4 * i + 1]) << 16
                | UInt32(chunk[base + 4 * i + 2]) << 8 | UInt32(chunk[base + 4 * i + 3])
        }
        func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
        for i in 16..<64 {
            let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
            let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
            w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
        }
        var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
        for i in 0..<64 {
            let s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)
            let ch = (e & f) ^ (~e & g)
            let t1 = hh &+ s1 &+ ch &+ Self.k[i] &+ w[i]
            let s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)
            let maj = (a & b) ^ (a & c) ^ (b & c)
            let t2 = s0 &+ maj
            hh = g; g = f; f = e; e = d &+ t1; d = c; c = b; b = a; a = t1 &+ t2
        }
        h[0] &+= a; h[1] &+= b; h[2] &+= c; h[3] &+= d; h[4] &+= e; h[5] &+= f; h[6] &+= g; h[7] &+= hh
    }
}
