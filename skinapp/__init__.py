"""skinapp: knowledge distillation for benign vs malignant skin-lesion photos (research tool, not a medical device)."""
__version__ = "0.1.0"
