"""Import of DGL reference checkpoints (github knightyxp/DGL, layout in DGL_SPEC.md §6).

Tower sizes are inferred from the tensor shapes, as the reference does; what shapes cannot tell
(frames T, max words W) comes from arguments with the spec's defaults. Loaded with weights_only=True.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dgl_deploy.errors import DGLError
from dgl_deploy.model.backbone import (
    arch_of,
    clip_from_state_dict,
    fingerprint,
    freeze,
    load_checked,
    load_weights_file,
)
from dgl_deploy.model.config import BackboneSpec, DGLConfig
from dgl_deploy.model.model import DGLModel

# reference key (after the `clip.` prefix) -> our parameter name, per latent space
_TRANSFORMER_KEYS = {"unified_prompt_embedding.": "latent.embedding.", "PromptTransformer.resblocks.0.": "latent.block.",
                     "unified_prompt_mlp.": "latent.mlp.", "visual.prompt_embeddings": "global_prompts"}
_LINEAR_KEYS = {"visual_prompt_embedding": "latent.prompt", "prefix_text_prompt_proj_layer.": "latent.pre_proj.",
                "postfix_text_prompt_proj_layer.": "latent.post_proj.", "visual.prompt_embeddings": "global_prompts"}
_REFERENCE_ONLY = ("visual.position_ids",)  # buffers of the reference that open_clip does not have


def import_reference(path: Path | str, frames: int = 12, max_words: int = 32) -> DGLModel:
    """A DGLModel whose frozen CLIP and prompts both come from a reference checkpoint."""
    path = Path(path)
    state = {k.removeprefix("clip."): v for k, v in load_weights_file(path).items() if k.startswith("clip.")}
    if not state:
        raise DGLError(f"{path}: no `clip.*` weights: not a DGL reference checkpoint")
    latent = _latent_of(state, path)
    mapping = _TRANSFORMER_KEYS if latent == "transformer" else _LINEAR_KEYS
    prompts, backbone = _split(state, mapping)
    clip = clip_from_state_dict(backbone, source=str(path))
    freeze(clip)
    config = _config_from_shapes(prompts, latent, clip.visual.conv1.out_channels, frames, max_words, path)
    spec = BackboneSpec(name="custom", pretrained=None, arch=arch_of(clip), fingerprint=fingerprint(clip))
    model = DGLModel(clip, spec, config)
    load_checked({k: p.data for k, p in model.prompt_parameters().items()}, prompts, str(path))
    return model


def _latent_of(state: dict[str, torch.Tensor], path: Path) -> str:
    if "unified_prompt_embedding.weight" in state:
        return "transformer"
    if "visual_prompt_embedding" in state:
        return "linear"
    raise DGLError(f"{path}: neither `unified_prompt_embedding` (transformer) nor `visual_prompt_embedding` "
                   "(linear) found: not a DGL reference checkpoint")


def _split(state: dict[str, torch.Tensor], mapping: dict[str, str]) -> tuple[dict, dict]:
    """(prompt tensors under our names, frozen CLIP tensors under open_clip names)."""
    prompts, backbone = {}, {}
    for key, tensor in state.items():
        ours = next((dst + key[len(src):] for src, dst in mapping.items() if key.startswith(src)), None)
        if ours is not None:
            prompts[ours] = tensor.squeeze(0) if ours in ("global_prompts", "latent.prompt") else tensor
        elif key not in _REFERENCE_ONLY and not _other_latent_key(key):
            backbone[key] = tensor
    return prompts, backbone


def _other_latent_key(key: str) -> bool:
    """Keys of the latent space a checkpoint does not use (the reference may still carry them)."""
    return any(key.startswith(src) for src in (*_TRANSFORMER_KEYS, *_LINEAR_KEYS))


def _config_from_shapes(prompts: dict[str, torch.Tensor], latent: str, width: int, frames: int, max_words: int,
                        path: Path) -> DGLConfig:
    global_prompts = prompts["global_prompts"].shape[0]
    if latent == "transformer":
        rows, cols = prompts["latent.embedding.weight"].shape
        local = global_prompts  # the reference ties local prompts per frame to the global prompt count
        text = rows - frames * local
        if text <= 0 or text % 2:
            raise DGLError(f"{path}: prompt table has {rows} rows, which does not fit frames={frames} x {local} "
                           "local prompts + an even number of text prompts: pass the --frames it was trained with")
    else:
        local, cols = prompts["latent.prompt"].shape
        text = 2 * local
    if cols % width:
        raise DGLError(f"{path}: prompt width {cols} is not a multiple of the vision width {width}")
    return DGLConfig(latent=latent, frames=frames, max_words=max_words, text_prompts=text, local_prompts=local,
                     global_prompts=global_prompts, prompt_layers=cols // width,
                     frame_sampling="reference")  # released checkpoints were tuned on the reference's frames
