"""The install hints (`dgl_deploy.extras`) agree with pyproject.toml: every extra they name exists, and every
optional package's distribution is in the extra the hint names."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

from dgl_deploy.extras import EXTRAS, PURPOSES, install_hint

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
DISTRIBUTIONS = {"open_clip": "open_clip_torch", "faiss": "faiss-cpu", "cuda": "cuda-python",
                 "multipart": "python-multipart", "prometheus_client": "prometheus-client",
                 "scenedetect": "scenedetect-headless", "cv2": "scenedetect-headless", "ray": "ray"}


def _requirements(extra: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """The distribution names an extra installs, through `dgl-deploy[...]` references."""
    names = set()
    for requirement in PYPROJECT["optional-dependencies"][extra]:
        name = re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name == "dgl-deploy":
            inner = re.search(r"\[(.*)\]", requirement).group(1).split(",")
            names |= {n for e in inner if e not in seen for n in _requirements(e.strip(), seen | {extra})}
        else:
            names.add(name)
    return names


def test_every_hint_names_an_extra_that_installs_the_package() -> None:
    assert set(PURPOSES) <= set(PYPROJECT["optional-dependencies"])
    for module, extra in EXTRAS.items():
        distribution = DISTRIBUTIONS.get(module, module).lower().replace("_", "-")
        assert distribution in _requirements(extra), (module, extra)
        assert install_hint(module).endswith(f"pip install 'dgl-deploy[{extra}]'")
