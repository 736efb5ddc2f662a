"""The settings of `dpsynth evaluate` (field docs double as `--help` texts)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dpsynth.config import check_text_and_labels, split_comma_list

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"


class EvaluateConfig(BaseModel):
    """Everything `dpsynth evaluate` needs. Field docs double as `--help` texts."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    real: Path = Field(description="Real held-out records (never trained on): the test set and the fidelity reference.")
    synthetic: Path | None = Field(None, description="Synthetic records; default: RUN_DIR/synthetic.csv from --run.")
    out: Path = Field(description="Folder for metrics.json and report.html.")
    overwrite: bool = Field(False, description="Replace an earlier evaluation (metrics.json, report.html) in --out.")
    train: Path | None = Field(None, description="Real training records: train-on-real baseline and copying checks.")
    run: Path | None = Field(None, description="Run folder whose privacy.json states the privacy guarantee (its "
                                               "text and label columns are the defaults here).")
    text_column: str = Field("text", description="Column holding the text.")
    label_columns: list[str] = Field(default_factory=list, description="Label columns to train classifiers on.")

    classifier: Literal["tfidf", "transformer"] = Field(
        "tfidf", description="Downstream classifier: fast TF-IDF + logistic regression, or a fine-tuned encoder.")
    classifier_model: str | None = Field(None, description="Encoder folder for --classifier transformer; default "
                                                           "the bundled MiniLM.")
    classifier_epochs: int = Field(3, ge=1, description="Fine-tuning epochs of the transformer classifier.")
    classifier_batch_size: int = Field(32, ge=1, description="Batch size of the transformer classifier.")
    classifier_learning_rate: float = Field(5e-5, gt=0, description="Learning rate of the transformer classifier.")
    classifier_max_length: int = Field(128, ge=8, description="Tokens per record for the transformer classifier.")

    embeddings: bool = Field(True, description="Compute embedding metrics (precision/recall, FID, MAUVE, "
                                               "nearest-neighbour distances).")
    embedding_model: str | None = Field(None, description="Local sentence-transformers folder; default the bundled "
                                                          "all-MiniLM-L6-v2.")
    k: int = Field(3, ge=1, description="Neighbours for the precision/recall support estimate.")
    max_fidelity_records: int | None = Field(
        5000, ge=10, description="Embed at most this many records per set (seeded subsample).")
    copy_ngram: int = Field(8, ge=2, description="Flag synthetic records sharing this many consecutive words with a "
                                                 "training record.")
    mia_model: str | None = Field(None, description="Causal LM folder (e.g. RUN_DIR/model) for a loss-based "
                                                    "membership-inference test of --train vs --real.")
    mia_max_records: int = Field(1000, ge=2, description="Records per side for membership inference.")
    num_examples: int = Field(8, ge=0, description="Synthetic examples shown in the report.")
    record_noun: str = Field("record", description="What one record is, for the privacy statement (e.g. review).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to embed and fine-tune.")
    seed: int = Field(0, description="Seed for subsampling, classifiers, k-means (MAUVE) and examples.")
    show_progress: bool = Field(True, description="Show progress bars.")

    _split_labels = field_validator("label_columns", mode="before")(lambda v: split_comma_list(v))

    @model_validator(mode="after")
    def _consistent(self) -> EvaluateConfig:
        check_text_and_labels(self.text_column, self.label_columns)
        if self.synthetic is None and self.run is None:
            raise ValueError("pass --synthetic, or --run RUN_DIR holding synthetic.csv")
        return self
