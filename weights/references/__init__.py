"""The upstream torch modules every parity check compares against (transformers' Qwen2,
diffusers' SANA DiT and DC-AE, timm's FastViTHD) and our reference MCP, loaded from a
checkpoint in the released layout.  torch is imported inside the functions."""
