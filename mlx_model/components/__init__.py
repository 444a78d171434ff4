"""The MLX modules of Mobile-O's components, each loadable from a checkpoint or a converted
MLX folder: vision tower, projector, LLM, MCP, SANA DiT, DC-AE, and the image encoder with
its multimodal prompt."""
