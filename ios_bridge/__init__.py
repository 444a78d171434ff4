"""The bridge to Xcode projects: the manifest every app reads, its validator, and the
Swift package (``ios_bridge/swift``) that reads them.

    python -m ios_bridge.validate build/         # schema + files + sizes + hashes

The golden vectors ``swift test`` checks are a test fixture: ``python tests/tools/golden.py OUTDIR``
(``make swift-test`` runs it).
"""

SCHEMA_VERSION = 4  # 2: one multifunction llm bundle, host inputs; 3: llm cache written at an int32 position, export (target, partial), component target, int8 embedding rows; 4: int4 embedding rows (int4_row_scale)
MANIFEST_FILE = "manifest.json"
