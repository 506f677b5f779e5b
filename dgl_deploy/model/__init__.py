"""The DGL model on a frozen open_clip CLIP (needs torch): settings, backbone, prompts, attention, the model
itself, its tokenizer, checkpoints and the reference importer. Nothing outside model/, training/, export/
and the torch backend imports this package at module level."""
