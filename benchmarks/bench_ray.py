"""`dgl embed --ray` throughput: videos/s on a local Ray cluster with 1 vs 2 CPUs (and as many encoder actors).

Embeds `--videos` synthetic clips with a random-init dgl-tiny model (torch CPU) via
`ray_embed.embed_videos_ray`; each run starts a fresh local cluster (start-up is not counted: the rate
is measured by the job itself, `EmbedResult.seconds`, which includes the Ray Data pipeline start).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import ray
from common import emit

from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.model.checkpoint import save
from dgl_deploy.model.model import create_model
from dgl_deploy.retrieval.embed import EmbedSettings
from dgl_deploy.retrieval.ray_embed import RaySettings, embed_videos_ray


def run(root: Path, cpus: int, settings: EmbedSettings) -> dict[str, float]:
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        result = embed_videos_ray(root / "videos", root / f"emb_{cpus}.npy", root / "model.safetensors", settings,
                                  RaySettings(num_cpus=cpus, encoders=cpus))
    finally:
        ray.shutdown()
    return {"cpus": cpus, "encoders": cpus, "seconds": round(result.seconds, 2),
            "videos_per_s": round(result.embedded / result.seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    settings = EmbedSettings(batch_size=8, chunk_size=16)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_synthetic(root / "videos", videos=args.videos, seed=0)
        save(create_model("dgl-tiny", pretrained=None), root / "model.safetensors")
        runs = [run(root, cpus, settings) for cpus in args.cpus]
    emit("ray_embed", {"videos": args.videos, "model": "dgl-tiny (random init, torch CPU)", "runs": runs})


if __name__ == "__main__":
    main()
