"""The Core ML bundle contract: what each bundle takes and returns, its states and the
constants the host computes (``contract``), and the bundle hash (``hashing``).  The
converter writes to it, the manifest and goldens describe it, Swift reads it; neither
``coreml_convert`` nor ``ios_bridge`` imports the other."""
