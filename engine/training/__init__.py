"""Training on cached video features: the trainer settings (config, torch-free), which parameters
train (trainable), the DDP step loop both trainers share (steps), sequence log-probs through
isrt.kernels (logprobs), DPO (dpo), the supervised warm start (sft) and its vision stage 0
(align_vision). Import the submodules; this package imports nothing, so `isrt.config` can use
`isrt.engine.training.config` without loading torch."""
