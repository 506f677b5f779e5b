"""dgl-deploy: DGL prompt tuning of a frozen CLIP for text-video retrieval, from training to production.

The Python API (`dgl_deploy.api`, loaded on first use: `import dgl_deploy` imports neither numpy nor torch):

    model = dgl_deploy.load_model("export")                  # an export folder (or a checkpoint)
    emb = dgl_deploy.embed_videos("videos/", "emb.npy", model=model)
    hits = emb.search("a dog catches a frisbee", k=5)       # or dgl_deploy.open_embeddings("emb.npy")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dgl_deploy.errors import DGLError

__version__ = "0.1.0"

if TYPE_CHECKING:  # for type checkers; at run time the names come from dgl_deploy.api on first use
    from dgl_deploy.api import EmbeddingSet, EmbedProgress, Hit, Model, embed_videos, load_model, open_embeddings

__all__ = ["DGLError", "__version__", "load_model", "embed_videos", "open_embeddings", "Model", "EmbeddingSet",
           "EmbedProgress", "Hit"]
_API = frozenset(__all__[2:])


def __getattr__(name: str) -> Any:
    """The API's names, imported from dgl_deploy.api when first asked for."""
    if name in _API:
        from dgl_deploy import api

        return getattr(api, name)
    raise AttributeError(f"module 'dgl_deploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
