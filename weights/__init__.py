"""The ground floor every side imports (the MLX pipeline, the converter, the bridge, the
tests); it imports neither torch nor MLX at module level, and none of the other packages.

    core/        errors with their fix, process memory, prompts and templates, the model
                 configs and generation defaults: facts with no I/O
    mapping/     the checkpoint: safetensors reading, which key belongs to which component
                 (layout), the Checkpoint reader, key maps to MLX, torch and timm names,
                 tokenizer files
    references/  the upstream torch modules (transformers, diffusers, timm) and our
                 reference MCP, built from a checkpoint; torch is imported inside them
    loading/     where a model comes from: the hub, local folders, the synthetic checkpoints
                 in the released layout (`--model demo`)
    bundles/     the Core ML bundle contract (inputs, outputs, states, host constants) and
                 bundle hashing, read by the converter, the manifest, the goldens and Swift

The floors run core <- mapping <- references <- loading; bundles stands on core.
"""
