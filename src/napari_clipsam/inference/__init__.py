"""Segmentation: image conversion, prompts, the predictor, the one segmentation pipeline,
object labels and label writes. No Qt."""
