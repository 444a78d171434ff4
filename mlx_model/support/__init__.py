"""What components and pipelines stand on: platform (dtype, memory, OpenBLAS), quantization,
image preprocessing, the tokenizer, schedulers, image files with their settings, and MLX
folders."""
