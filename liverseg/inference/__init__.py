"""Prediction: tiling and blending, one-volume prediction, model sources, batch prediction."""
