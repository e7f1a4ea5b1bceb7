"""skinapp: knowledge distillation for benign vs malignant skin-lesion photos (research tool, not a medical device)."""
import os

__version__ = "0.1.0"

# PyTorch's OpenMP threads (libgomp) spin after each parallel region, by default long enough on a 2-core CPU for
# the fused teacher's calls to leave ONNX Runtime's students at eager speed (7.5 ms a photo instead of 3.5;
# docs/experiments.md, "The slow mode with PyTorch in the loop"). 10,000 spins still bridge the gaps between one
# network's operators. libgomp reads it once, when torch is first imported, so it is set here, before any module
# of ours imports torch; a value the user set wins.
GOMP_SPINCOUNT = "10000"
os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
