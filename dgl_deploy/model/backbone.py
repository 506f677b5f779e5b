"""The frozen CLIP backbone: created by open_clip (name + pretrained tag), from a local weights file,
or from the tiny configs registered here; only OpenAI-style ViT towers are accepted."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIP
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, VisionTransformer
from torch import nn

from dgl_deploy.errors import DGLError
from dgl_deploy.limits import parse_json
from dgl_deploy.model.config import TOWER_SHAPE_KEYS, BackboneSpec, check_arch

CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)  # registers the tiny test/demo towers like real ones

# DGL settings that differ from the spec's defaults for the small registered towers.
PRESETS: dict[str, dict[str, Any]] = {
    "dgl-tiny": {"frames": 4, "max_words": 16},
    "dgl-tiny-gelu": {"frames": 4, "max_words": 16},  # plain GELU, like open_clip's non-OpenAI configs
    "dgl-mini": {"frames": 8, "max_words": 16},
}


def create_clip(name: str, pretrained: str | None = None) -> tuple[CLIP, BackboneSpec]:
    """A frozen open_clip CLIP plus its identity. `pretrained` is an open_clip tag, a weights file, or None.

    For a weights file the tower config comes from, in order: the file's own metadata (backbones saved by
    dgl-deploy, checked against the file's tensor shapes), the open_clip config `name` (use the `-quickgelu`
    names for OpenAI weights, as open_clip does), or, for an unknown name, the shapes in the file with
    OpenAI's QuickGELU (as the DGL reference).
    """
    if pretrained and _looks_like_path(pretrained):
        path = Path(pretrained)
        state = load_weights_file(path)
        arch = _saved_arch(path, state)
        if arch is None and name in open_clip.list_models():
            model = _create_open_clip(name, None)  # the named architecture, random init, weights loaded below
            check_openai_vit(model, name)
        else:
            model = build_clip(arch or infer_arch(state))
            name = name if name in open_clip.list_models() else "custom"
        load_checked(model.state_dict(), state, str(path))
        pretrained = str(path.resolve())
    else:
        model = _create_open_clip(name, pretrained)
    check_openai_vit(model, name)
    freeze(model)
    return model, BackboneSpec(name=name, pretrained=pretrained, arch=arch_of(model), fingerprint=fingerprint(model))


def _saved_arch(path: Path, state: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The tower config stored in the metadata of a backbone file written by `checkpoint.save`, after checking
    it is well-formed and fits the file's own tensor shapes (a forged config cannot build a bigger model)."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        text = (handle.metadata() or {}).get("arch")
    if not text:
        return None
    arch = check_arch(parse_json(text, f"{path}: arch metadata is not JSON"), f"{path}: arch")
    claimed, actual = _shape_keys(arch), _shape_keys(infer_arch(state))
    if claimed != actual:
        raise DGLError(f"{path}: arch metadata does not fit the file's tensors ({arch_diff(actual, claimed)})")
    return arch


def _shape_keys(arch: dict[str, Any]) -> dict[str, Any]:
    """The part of a tower config that the tensor shapes determine."""
    return {"embed_dim": arch["embed_dim"], **{tower: {k: arch[tower][k] for k in keys}
                                              for tower, keys in TOWER_SHAPE_KEYS.items()}}


def arch_diff(want: dict[str, Any], got: dict[str, Any]) -> str:
    """The first few differences between two tower configs, as `key got != want`."""
    diffs = []
    for tower in ("vision_cfg", "text_cfg"):
        for key in sorted(set(want.get(tower, {})) | set(got.get(tower, {}))):
            if want.get(tower, {}).get(key) != got.get(tower, {}).get(key):
                diffs.append(f"{tower}.{key} {got.get(tower, {}).get(key)} != {want.get(tower, {}).get(key)}")
    if want.get("embed_dim") != got.get("embed_dim"):
        diffs.append(f"embed_dim {got.get('embed_dim')} != {want.get('embed_dim')}")
    return ", ".join(diffs[:4]) or "activation differs"


def _looks_like_path(value: str) -> bool:
    return "/" in value or Path(value).suffix in {".pt", ".pth", ".bin", ".safetensors", ".ckpt"}


def _create_open_clip(name: str, pretrained: str | None) -> CLIP:
    if name not in open_clip.list_models():
        raise DGLError(f"unknown CLIP model {name!r}; known OpenAI-style ViTs include ViT-B-32, ViT-B-16, ViT-L-14, dgl-tiny")
    try:
        with quiet_root_logger(pretrained is None):  # open_clip warns that random init has no weights
            return open_clip.create_model(name, pretrained=pretrained, precision="fp32", device="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise DGLError(f"cannot load CLIP {name!r} with pretrained={pretrained!r}: {_first_line(exc)[:240]} "
                       "(offline? pass a local weights file: --pretrained PATH)") from None


@contextlib.contextmanager
def quiet_root_logger(active: bool = True) -> Iterator[None]:
    """Root-logger warnings off while active (open_clip's "no pretrained weights", onnxruntime's tools' advice)."""
    root = logging.getLogger()
    level = root.level
    if active:
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def check_openai_vit(model: nn.Module, name: str) -> None:
    """Reject anything but an OpenAI-style CLIP with a plain ViT image tower and a causal text tower."""
    reason = _unsupported_reason(model)
    if reason:
        raise DGLError(f"backbone {name!r} is not supported: {reason} (only OpenAI-style ViT CLIP towers are)")


def _unsupported_reason(model: nn.Module) -> str | None:
    if not isinstance(model, CLIP):
        return f"{type(model).__name__} is not an open_clip CLIP with the built-in text tower"
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        return f"image tower is {type(visual).__name__}, not a ViT"
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
        return "image tower does not pool the class token"
    if model.text_pool_type != "argmax":
        return f"text tower pools with {model.text_pool_type!r}, not at the EOT (argmax) token"
    blocks = list(visual.transformer.resblocks) + list(model.transformer.resblocks)
    for block in blocks:
        if not isinstance(block, ResidualAttentionBlock) or hasattr(block, "ln_1_kv"):
            return "towers use custom attention blocks"
        if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
            return "towers use layer scale"
    return None


def freeze(model: nn.Module) -> None:
    model.requires_grad_(False)
    model.eval()


def arch_of(model: CLIP) -> dict[str, Any]:
    """The open_clip config that rebuilds this CLIP's shapes (read from the modules themselves)."""
    visual = model.visual
    v_block = visual.transformer.resblocks[0]
    t_block = model.transformer.resblocks[0]
    return {
        "embed_dim": int(visual.proj.shape[1]),
        "quick_gelu": isinstance(v_block.mlp.gelu, QuickGELU),
        "vision_cfg": {
            "image_size": int(visual.image_size[0]),
            "patch_size": int(visual.patch_size[0]),
            "width": int(visual.conv1.out_channels),
            "layers": len(visual.transformer.resblocks),
            "head_width": int(visual.conv1.out_channels // v_block.attn.num_heads),
            "mlp_ratio": v_block.mlp.c_fc.out_features / v_block.mlp.c_fc.in_features,
        },
        "text_cfg": {
            "context_length": int(model.context_length),
            "vocab_size": int(model.vocab_size),
            "width": int(model.token_embedding.embedding_dim),
            "heads": int(t_block.attn.num_heads),
            "layers": len(model.transformer.resblocks),
            "mlp_ratio": t_block.mlp.c_fc.out_features / t_block.mlp.c_fc.in_features,
        },
    }


def build_clip(arch: dict[str, Any]) -> CLIP:
    """A random-init open_clip CLIP with the given config."""
    return CLIP(**arch)


def infer_arch(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Tower sizes from an OpenAI-named state dict, as OpenAI/the DGL reference infer them (heads = width / 64)."""
    required = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "token_embedding.weight",
                "positional_embedding", "text_projection", "ln_final.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise DGLError(f"not an OpenAI-style ViT CLIP state dict: missing {', '.join(missing)}")
    conv = state["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["ln_final.weight"].shape[0]

    def layers(prefix: str) -> int:
        return len({k.split(".")[len(prefix.split("."))] for k in state if k.startswith(prefix + ".")})

    return {
        "embed_dim": int(state["text_projection"].shape[1]),
        "quick_gelu": True,
        "vision_cfg": {"image_size": int(grid * patch), "patch_size": int(patch), "width": int(width),
                       "layers": layers("visual.transformer.resblocks"), "head_width": 64},
        "text_cfg": {"context_length": int(state["positional_embedding"].shape[0]),
                     "vocab_size": int(state["token_embedding.weight"].shape[0]), "width": int(text_width),
                     "heads": max(1, int(text_width // 64)), "layers": layers("transformer.resblocks")},
    }


def clip_from_state_dict(state: dict[str, torch.Tensor], source: str) -> CLIP:
    """Build a CLIP whose shapes are inferred from `state` and load it, checking every key and shape."""
    model = build_clip(infer_arch(state))
    load_checked(model.state_dict(), state, source)
    return model


def check_shapes(target: dict[str, tuple[int, ...]], state: dict[str, tuple[int, ...]], source: str) -> None:
    """DGLError naming what does not fit when the tensor names/shapes `state` are not exactly `target`'s."""
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = [f"{k} {state[k]} != {v}" for k, v in target.items() if k in state and state[k] != v]
    problems = [f"{label} {names[:3]}{'...' if len(names) > 3 else ''}"
                for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong)) if names]
    if problems:
        raise DGLError(f"{source}: weights do not match the model: {'; '.join(problems)}")


def load_checked(target: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into the tensors of `target` (e.g. a module's state_dict), checking every key and shape
    and naming what does not fit instead of raising a wall of text."""
    check_shapes({k: tuple(v.shape) for k, v in target.items()}, {k: tuple(v.shape) for k, v in state.items()}, source)
    with torch.no_grad():
        for key, tensor in target.items():
            tensor.copy_(state[key].to(tensor.dtype))


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors or torch file (never unpickled), unwrapped from `state_dict`, `module.` removed."""
    if not path.is_file():
        raise DGLError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state: Any = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # pickled objects besides tensors (or not a torch archive at all)
        raise DGLError(f"{path}: not a safe checkpoint: not a plain archive of tensors, and pickled code is never "
                       "loaded; save its state dict as .safetensors (or a dict of tensors) where it was made") from None
    except Exception as exc:  # corrupt archive, JIT archive, truncated file: refused the same way
        raise DGLError(f"{path}: cannot read weights ({_first_line(exc)[:200]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DGLError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def fingerprint(model: nn.Module) -> str:
    """A fast, stable hash of the frozen weights: every name and shape plus a strided sample of the values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1).float()
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
