"""Facts with no I/O: errors (one line with its fix), process memory, prompt templates,
the model configs and generation defaults, the sampler table (samplers.py)."""
