"""The bridge to Xcode projects: the manifest every app reads, its validator, and the
Swift package (``ios_bridge/swift``) that reads them.

    python -m ios_bridge.validate build/         # schema + files + sizes + hashes

The golden vectors ``swift test`` checks are a test fixture: ``python tests/tools/golden.py OUTDIR``
(``make swift-test`` runs it).
"""

SCHEMA_VERSION = 2  # 2: one multifunction llm bundle, host inputs (embeddings, RoPE, masks, timestep features)
MANIFEST_FILE = "manifest.json"
