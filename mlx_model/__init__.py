"""Mobile-O in pure MLX: Qwen2 prompt encoding (mlx-lm), the Mobile Conditioning Projector,
SANA DiT, DC-AE and the flow DPM-Solver++ sampler.  Weights come through :mod:`weights`;
nothing here imports torch."""
