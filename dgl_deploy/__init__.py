"""dgl-deploy: DGL prompt tuning of a frozen CLIP for text-video retrieval, from training to production."""

__version__ = "0.1.0"

from dgl_deploy.errors import DGLError

__all__ = ["DGLError", "__version__"]
