"""The one library call behind `dgl export`: load a model, write the ONNX export, optionally build engines."""

from __future__ import annotations

from pathlib import Path

from dgl_deploy import defaults
from dgl_deploy.errors import DGLError
from dgl_deploy.export.onnx_export import export_onnx
from dgl_deploy.export.tensorrt import TrtSettings, build_engines
from dgl_deploy.runtime.backends.select import Log
from dgl_deploy.runtime.manifest import MANIFEST_FILE, REDUCED_MIN_COSINE, Manifest, load_manifest


def export_model(model_path: Path | str, out: Path | str, *, precisions: tuple[str, ...] = ("int8",),
                 opset: int = defaults.OPSET,
                 overwrite: bool = False, trt: TrtSettings | None = None, log: Log = print) -> Manifest:
    """Export checkpoint `model_path` to folder `out` (fp32 + `precisions`), then TensorRT engines if `trt`.
    With `trt.rebuild` and an existing export of the same model, only the engines are rebuilt."""
    from dgl_deploy.model.checkpoint import model_fingerprint
    from dgl_deploy.model.loading import load_model

    out = Path(out)
    model = load_model(model_path)
    if trt is not None and trt.rebuild and (out / MANIFEST_FILE).is_file():
        existing = load_manifest(out)
        if existing.fingerprint != model_fingerprint(model):
            raise DGLError(f"{out}: holds an export of model {existing.fingerprint}, not of {model_path}; "
                           "use another --out or --overwrite")
        return build_engines(out, trt, log)
    manifest = export_onnx(model, out, checkpoint=str(Path(model_path).resolve()), precisions=precisions,
                           opset=opset, overwrite=overwrite, log=log)
    for precision, device in (("int8", "CPU"), ("fp16", "CUDA")):
        if precision in precisions:
            log(auto_precision_line(manifest, precision, device))
    return build_engines(out, trt, log) if trt is not None else manifest


def auto_precision_line(manifest: Manifest, precision: str, device: str) -> str:
    """What `--precision auto` will do on `device` with this export's `precision` graphs, and why (on CPU it checks
    again on each host, `runtime.host_check`)."""
    worst = manifest.worst_cosine(precision)
    if device == "CPU":
        verdict = ">=" if manifest.parity_held(precision) else "<"
        return (f"{precision} min cosine {worst:.6f} {verdict} {REDUCED_MIN_COSINE} on this host; auto checks the probe "
                f"batch again on each CPU host on first use and runs {precision} where it holds there and is faster")
    if manifest.parity_held(precision):
        return f"{precision} parity held (min cosine {worst:.6f} >= {REDUCED_MIN_COSINE}): auto uses {precision} on {device}"
    return (f"{precision} parity missed (min cosine {worst:.6f} < {REDUCED_MIN_COSINE}): auto keeps fp32 on {device}; "
            f"--precision {precision} still runs it")
