"""The model stage: what the training records hold (control codes + text), and where the loss is taken."""

from __future__ import annotations

from pathlib import Path

import torch

from dpsynth.config import RunConfig
from dpsynth.stages.data import load_private_data
from dpsynth.stages.model import encode_training_records, load_base_model


def test_default_training_loss_skips_the_control_codes(reviews_csv: Path, tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    """Sampling is given the codes, so by default no clipped gradient is spent on predicting them."""
    def masks(**kw: object) -> tuple[torch.Tensor, int]:
        config = RunConfig(data=reviews_csv, label_columns=["sentiment"], model=str(tiny_model_dir),
                           out=tmp_path / "x", max_tokens=48, **kw)
        data = load_private_data(config)
        loaded = load_base_model(config, torch.device("cpu"))
        records = encode_training_records(config, data, loaded)
        prefix = "sentiment: " + str(data.table["sentiment"].iloc[0]) + "\n\n"
        n_prefix = len(loaded.tokenizer(prefix, add_special_tokens=False)["input_ids"])
        return records[0].loss_mask, n_prefix

    mask, n_prefix = masks()
    assert not mask[:n_prefix].any() and mask[n_prefix:].all()
    mask, _ = masks(loss_on_prefix=True)
    assert mask.all()
