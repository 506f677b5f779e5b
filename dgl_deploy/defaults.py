"""The defaults shared by the model, training, export and the CLI, in one place (torch-free)."""

FRAMES = 12  # [T] frames per video (the reference recipe)
MAX_WORDS = 32  # [W] caption tokens incl. SOT/EOT
OPSET = 18  # ONNX opset of exports (the dynamo exporter's minimum)
