"""Stage 7: what the run writes about itself — run.json (shareable: settings, versions, summaries, N) and
data_report.json (private: exact statistics of the data)."""

from __future__ import annotations

import importlib.metadata
import math
import platform
from typing import Any

import peft
import torch
import transformers

from dpsynth import __version__
from dpsynth.config import RunConfig
from dpsynth.models.loading import LoadedModel, describe_model
from dpsynth.privacy.labels import LabelDistribution
from dpsynth.privacy.ledger import PrivacyLedger
from dpsynth.privacy.plan import PrivacyPlan
from dpsynth.stages.data import PrivateData
from dpsynth.stages.folder import DATA_REPORT, RunFolder


def versions() -> dict[str, str]:
    return {
        "dpsynth": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
        "dp_accounting": importlib.metadata.version("dp-accounting"),  # the package has no __version__
    }


def write_records(config: RunConfig, folder: RunFolder, *, data: PrivateData, loaded: LoadedModel,
                  plan: PrivacyPlan, ledger: PrivacyLedger, labels: LabelDistribution | None,
                  training: dict[str, Any], sampling: dict[str, Any], device: torch.device, precision: str,
                  world_size: int, timings: dict[str, float]) -> None:
    """data_report.json gets the exact statistics (the training summary's private parts included); run.json the
    rest, with of the data only N, which the accountant treats as public."""
    private = {"examples_trained": training.pop("examples_seen", None),
               "clipping_layer_methods": training.pop("layer_methods", None)}
    folder.write_json(folder.data_report, {
        "covered_by_privacy_guarantee": False,
        "note": "Exact statistics of the private data, computed without noise: keep this file with the private "
                "data and do not publish it.", **data.report, **private})
    folder.write_json(folder.record, {
        "dpsynth_version": __version__,
        "config": config.model_dump(mode="json"),
        "versions": versions(),
        "device": str(device), "precision": precision, "world_size": world_size,
        # Described after training: with LoRA the model now carries its adapters (at load time it did not).
        "model": describe_model(loaded.model) | {"name": loaded.name,
                                                 "parameters_trainable": training.get("trainable_weights")},
        "data": {"num_units": data.num_units, "unit": data.unit_name, "max_tokens": config.max_tokens,
                 "exact_statistics": DATA_REPORT},
        "privacy": {"epsilon": ledger.epsilon if plan.private and math.isfinite(ledger.epsilon) else None,
                    "delta": ledger.delta, "plan": plan.describe()},
        "training": training,
        "sampling": sampling,
        "label_distribution": None if labels is None else {"source": labels.source,
                                                           "noise_multiplier": labels.noise_multiplier},
        "timings": timings,
    })
