"""Mobile-O in pure MLX: Qwen2 prompt encoding (mlx-lm), the Mobile Conditioning Projector,
SANA DiT, DC-AE and the flow DPM-Solver++ sampler.  Weights come through :mod:`weights`;
nothing here imports torch.

Floors, from the ground up: ``support/`` (platform, quantization, preprocessing, tokenizer,
schedulers, image files, MLX folders) <- ``components/`` (one model file per component) <-
``pipelines/`` (generation, understanding, conversation, batch) <- the commands at this level
(``generate``, ``edit``, ``understand``, ``chat``, ``convert``, ``cli_common``) and ``server/``."""
