"""The checkpoint and its key names: safetensors reading, the component layout, the
``Checkpoint`` reader, and the key maps to MLX, torch and timm names."""
