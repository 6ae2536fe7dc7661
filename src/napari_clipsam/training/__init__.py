"""Few-shot fine-tuning and evaluation: datasets, augmentation, losses, the training engine. No Qt."""
