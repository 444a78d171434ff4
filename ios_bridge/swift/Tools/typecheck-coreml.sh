#!/bin/sh
# Type-check the Core ML runner on machines without Core ML (Linux CI): build
# Sources/MobileO against Tools/CoreMLStub in a scratch package under .build/.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(uname)" = Darwin ]; then echo "typecheck-coreml: macOS compiles the real runner; nothing to do"; exit 0; fi
work="$here/.build/coreml-typecheck"
rm -rf "$work/Sources"
mkdir -p "$work/Sources/CoreML" "$work/Sources/MobileO"
cp "$here/Tools/CoreMLStub/CoreML.swift" "$work/Sources/CoreML/"
cp "$here"/Sources/MobileO/*.swift "$work/Sources/MobileO/"
cat > "$work/Package.swift" <<'PKG'
// swift-tools-version:5.9
import PackageDescription
let package = Package(name: "CoreMLTypecheck", targets: [
    .target(name: "CoreML"), .target(name: "MobileO", dependencies: ["CoreML"])])
PKG
cd "$work" && swift build -q && echo "typecheck-coreml: CoreMLRunner.swift type-checks against the Core ML stub"
