"""isrt.engine: video decoding, model adapters, data, generation, DPO training, distributed, checkpoints."""
