"""The bridge to Xcode projects: the manifest every app reads, its validator, and the
golden vectors the Swift package (``ios_bridge/swift``) is tested against.

    python -m ios_bridge.validate build/         # schema + files + sizes + hashes
    python -m ios_bridge.golden OUTDIR           # golden vectors for `swift test`
"""

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
