"""Stage 5, inference: evaluation, test-time augmentation, predict, ensemble and export."""
