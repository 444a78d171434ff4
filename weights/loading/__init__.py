"""Where a model comes from: hub ids, local folders (``open_model``) and the synthetic
checkpoints in the released layout (``--model demo``)."""
