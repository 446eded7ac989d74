"""A trained network at work: Predictor and load, eval, export to ONNX and pt2, int8, parity."""
