"""One import namespace, three layers: isrt (isrt/), isrt.engine (engine/), isrt.kernels (kernels/).

Nothing named `kernels` or `engine` is installed at top level: `kernels` is Hugging Face's
kernel-hub package, which transformers probes for.
"""
from setuptools import setup

setup(
    name="isrt",
    version="0.1.0",
    description="i-SRT: iterative self-retrospective judgment for video LMMs, with fused DPO head kernels",
    python_requires=">=3.10",
    packages=["isrt", "isrt.eval", "isrt.report", "isrt.engine", "isrt.engine.adapters", "isrt.engine.training",
              "isrt.engine.video", "isrt.kernels"],
    package_dir={"isrt": "isrt", "isrt.engine": "engine", "isrt.kernels": "kernels"},  # subpackages follow
    package_data={"isrt": ["presets/*.yaml", "templates/*.txt"]},
    # Ranges admit both the CPU development set and the GPU machine's set (../shared/STACK.md).
    # torch is capped so pip never swaps a working install for a newer multi-GB CUDA build.
    install_requires=[
        "torch>=2.11,<2.14",
        "transformers>=5.17,<5.25",
        "peft>=0.17",
        "safetensors>=0.4",
        "numpy",
        "omegaconf>=2.3",
        "PyYAML",
        "tqdm",
        "av>=14",
    ],
    extras_require={
        "triton": ["triton>=3.6"],
        "decord": ["decord2"],
        "dali": ["nvidia-dali-cuda130"],
        "report": ["matplotlib"],
        "test": ["pytest", "pytest-timeout", "psutil"],
    },
)
