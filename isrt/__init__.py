"""i-SRT: iterative self-retrospective judgment for aligning video LMMs (arXiv 2406.11280).

Layers, one direction of imports: isrt.kernels <- isrt.engine <- isrt.
"""
__version__ = "0.1.0"
