"""The pieces sharded sampling needs: per-chunk part files and a few object collectives over torch.distributed.

Why part files: each rank generates whole chunks (the sampler's fixed, world-size-independent units), and a rank
that is killed must not lose more than the chunk it was on. So every finished chunk is written atomically
(temporary file, fsync, rename) to a hidden `.<output name>.parts/` folder next to the output; a resumed run, with
any world size, reuses the chunks found there. A part records the sampling fingerprint and its row range, so a
part from other settings or other chunk boundaries is never mistaken for this run's.

Why collectives as well as files: the texts a rank generated are also sent to rank 0 over the process group, so
the merge does not need a filesystem shared by all nodes (the files then only serve resuming on that node).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from dpsynth.atomic import write_json_atomic
from dpsynth.errors import DpsynthError
from dpsynth.train.distributed import DistContext


def parts_dir(out_path: str | Path) -> Path:
    """The hidden folder holding an output file's finished chunks until rank 0 has merged them."""
    out_path = Path(out_path)
    return out_path.with_name(f".{out_path.name}.parts")


def _part_path(parts: Path, chunk: int) -> Path:
    return parts / f"chunk-{chunk:06d}.json"


def write_part(parts: Path, chunk: int, *, fingerprint: str, start: int, stop: int, texts: list[str]) -> None:
    """Commit one chunk's generated texts (before post-processing) atomically: a kill leaves it whole or absent."""
    payload = {"fingerprint": fingerprint, "chunk": chunk, "start": start, "stop": stop, "texts": texts}
    # ASCII escapes: any Python string round-trips exactly
    write_json_atomic(_part_path(parts, chunk), payload, ensure_ascii=True, indent=None)
    try:  # make the rename itself durable
        fd = os.open(parts, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - filesystems that cannot fsync a directory
        pass


def read_part(parts: Path, chunk: int, *, fingerprint: str, start: int, stop: int) -> list[str] | None:
    """The chunk's texts if a matching, intact part exists; None if it is missing, damaged or from other settings."""
    try:
        payload = json.loads(_part_path(parts, chunk).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict):
        return None
    texts = payload.get("texts")
    if payload.get("fingerprint") != fingerprint or payload.get("start") != start or payload.get("stop") != stop:
        return None
    if not isinstance(texts, list) or len(texts) != stop - start or not all(isinstance(t, str) for t in texts):
        return None
    return texts


# ------------------------------------------------------------------------------------------ collectives
def share_from_main(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's `obj` on every rank (each rank passes its own; only rank 0's is used)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def gather_to_main(ctx: DistContext, obj: Any) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def check_same_on_all_ranks(ctx: DistContext, value: Any, what: str) -> None:
    """Raise on every rank (not just one, which would leave the others waiting) if ranks disagree on `value`."""
    values = all_gather(ctx, value)
    if any(v != values[0] for v in values):
        differing = [r for r, v in enumerate(values) if v != values[0]]
        raise DpsynthError(f"The ranks disagree on the {what} (ranks {differing} differ from rank 0); every rank "
                           "must run the same command on the same inputs.")


def weights_digest(model: Any) -> str:
    """A hash of the trainable weights' exact bytes (all weights if none is trainable).

    Sharded sampling is only equivalent to one process sampling if every rank holds bit-identical weights; DP
    training keeps them so (one broadcast noisy update per step), and this is the cheap check that it did.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad] or list(model.named_parameters())
    h = hashlib.sha256()
    for name, p in params:
        h.update(name.encode())
        h.update(p.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()

