"""The utility grid: `bench/utility.py` over corpora × training sizes × ε × seeds × variants, in parallel jobs.

Each cell is one `bench/utility.py` process (one ε, one seed) writing its own JSON under `--out`; a cell whose JSON
exists is skipped, so an interrupted grid continues where it stopped and new variants or seeds add cells. With
`--jobs 2 --threads 1` two cells run side by side on a 2-core machine. At the end (or with `--summary-only`) the
cells are joined into one table per label column: real-trained, majority class, and each ε's synthetic-trained
accuracy, macro-F1 and label agreement (means over the seeds present), with the goals of issue 24 checked:
ε = ∞ ≥ 90 % of real accuracy, ε = 4 ≥ 95 % of ε = ∞, agreement ≥ 0.8 × the real classifier's own accuracy.

    .venv/bin/python bench/utility_grid.py --corpora airline,reuters --records 1000 --epsilons inf,4 \\
        --seeds 0,1 --jobs 2 --variant base --variant "lr2e3=--learning-rate 2e-3 --epochs 4"

Writes `<out>/<variant>/<corpus>_n<N>_eps<ε>_s<seed>.json` per cell and `<out>/summary.{json,md}`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "out" / "grid"
GOAL_INF_VS_REAL = 0.90
GOAL_EPS_VS_INF = 0.95
GOAL_AGREEMENT = 0.8  # label agreement ≥ this × the agreement classifier's accuracy on real text


@dataclass(frozen=True)
class Cell:
    variant: str
    flags: tuple[str, ...]
    corpus: str
    records: int
    epsilon: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.corpus}_n{self.records}_eps{self.epsilon}_s{self.seed}"

    def json_path(self, out: Path) -> Path:
        return out / self.variant / f"{self.name}.json"

    def command(self, out: Path, threads: int, test_records: int) -> list[str]:
        return [sys.executable, str(BENCH_DIR / "utility.py"), "--corpus", self.corpus,
                "--train-records", str(self.records), "--test-records", str(test_records),
                "--epsilon", self.epsilon, "--seed", str(self.seed), "--threads", str(threads),
                "--out-dir", str(out / self.variant / "runs" / self.name),
                "--out", str(self.json_path(out)), *self.flags]


def parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    name, _, flags = text.partition("=")
    if not name.strip() or "/" in name:
        raise argparse.ArgumentTypeError(f"a variant is NAME or NAME=FLAGS, got {text!r}")
    return name.strip(), tuple(shlex.split(flags))


def run_cell(cell: Cell, out: Path, threads: int, test_records: int) -> tuple[Cell, int, float]:
    path = cell.json_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.with_suffix(".log")
    start = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(cell.command(out, threads, test_records), stdout=fh, stderr=subprocess.STDOUT).returncode
    elapsed = time.perf_counter() - start
    print(f"[{time.strftime('%H:%M:%S')}] {cell.variant}/{cell.name}: exit {rc}, {elapsed / 60:.1f} min",
          flush=True)
    return cell, rc, elapsed


# ------------------------------------------------------------------------------------------ summary
def _scores(cell_json: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    eps = cell_json["settings"]["epsilons"][0]
    entry = cell_json["scores"].get(f"eps_{eps}")
    if not entry or "error" in entry:
        return None
    return eps, entry


def summarise_grid(out: Path) -> dict[str, Any]:
    """Mean scores per (variant, corpus, N, label, set) over the seeds found, and the goals."""
    rows: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(out.glob("*/*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("benchmark") != "utility":
            continue
        variant, corpus, n = path.parent.name, data["data"].get("corpus", "rotten_tomatoes"), data["data"][
            "train_records"]
        found = _scores(data)
        for col in data["data"]["label_columns"]:
            real = data["scores"]["real"]["labels"][col]
            base = rows[(variant, corpus, n, col, "real")]
            base["accuracy"].append(real["accuracy"])
            base["macro_f1"].append(real["macro_f1"])
            base["majority"].append(real["majority_accuracy"])
            base["majority_f1"].append(_majority_f1(real["majority_accuracy"],
                                                    len(data["data"]["test_label_counts"][col])))
            if found is None:
                continue
            eps, entry = found
            sc = entry["labels"][col]
            cell = rows[(variant, corpus, n, col, f"eps_{eps}")]
            cell["accuracy"].append(sc["accuracy"])
            cell["macro_f1"].append(sc["macro_f1"])
            cell["label_agreement"].append(sc["label_agreement"])
            cell["seed"].append(data["settings"]["seeds"]["run"])
            cell["train_s"].append(data["runs"][f"eps_{eps}"]["timings_s"].get("train_s", math.nan))
    table: dict[str, Any] = {}
    for (variant, corpus, n, col, name), values in sorted(rows.items()):
        key = f"{variant}|{corpus}|{n}|{col}"
        agg = {k: mean(v) for k, v in values.items() if k != "seed" and v}
        agg["seeds"] = sorted(set(values.get("seed", [])))
        table.setdefault(key, {})[name] = agg
    for sets in table.values():
        real, inf, four = sets.get("real", {}), sets.get("eps_inf"), sets.get("eps_4")
        goals: dict[str, Any] = {}
        if inf:
            goals["inf_vs_real"] = inf["accuracy"] / real["accuracy"]
            goals["inf_f1_over_majority"] = inf["macro_f1"] - real["majority_f1"]
            goals["inf_agreement_ratio"] = inf["label_agreement"] / real["accuracy"]
        if inf and four:
            goals["eps4_vs_inf"] = four["accuracy"] / inf["accuracy"]
        if four:
            goals["eps4_agreement_ratio"] = four["label_agreement"] / real["accuracy"]
        sets["goals"] = goals
    return table


def _majority_f1(majority_accuracy: float, classes: int) -> float:
    """Macro-F1 of always predicting the majority class (share m of K classes): its F1 2m/(1+m), the others 0."""
    return 2 * majority_accuracy / (1 + majority_accuracy) / classes


def render_markdown(table: dict[str, Any]) -> str:
    lines = ["| variant | corpus | N | label | real acc / F1 | majority acc / F1 | ε = ∞ acc / F1 / agree (seeds) | "
             "ε = 4 acc / F1 / agree (seeds) | ∞ / real | 4 / ∞ | agree / real acc (∞, 4) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(s: dict[str, Any] | None) -> str:
        if not s:
            return "–"
        return (f"{s['accuracy']:.3f} / {s['macro_f1']:.3f} / {s['label_agreement']:.3f} "
                f"({','.join(map(str, s['seeds']))})")

    def pct(v: float | None, goal: float | None = None) -> str:
        if v is None:
            return "–"
        mark = "" if goal is None else (" ✓" if v >= goal else " ✗")
        return f"{v:.0%}{mark}"

    for key, sets in table.items():
        variant, corpus, n, col = key.split("|")
        real, g = sets["real"], sets["goals"]
        agree = ", ".join(pct(g.get(k), GOAL_AGREEMENT) for k in ("inf_agreement_ratio", "eps4_agreement_ratio"))
        lines.append(f"| {variant} | {corpus} | {n} | {col} | {real['accuracy']:.3f} / {real['macro_f1']:.3f} | "
                     f"{real['majority']:.3f} / {real['majority_f1']:.3f} | {fmt(sets.get('eps_inf'))} | "
                     f"{fmt(sets.get('eps_4'))} | "
                     f"{pct(g.get('inf_vs_real'), GOAL_INF_VS_REAL)} | {pct(g.get('eps4_vs_inf'), GOAL_EPS_VS_INF)} "
                     f"| {agree} |")
    return "\n".join(lines)


def write_summary(out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    table = summarise_grid(out)
    (out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    md = render_markdown(table)
    (out / "summary.md").write_text(md + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpora", default="rotten_tomatoes,airline,newsgroups,reuters")
    p.add_argument("--records", default="1000,5000", help="comma-separated training sizes")
    p.add_argument("--test-records", type=int, default=1000)
    p.add_argument("--epsilons", default="inf,4")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--variant", action="append", type=parse_variant, default=None,
                   help="NAME or NAME=FLAGS for bench/utility.py (repeatable; default: base, no flags)")
    p.add_argument("--jobs", type=int, default=2, help="cells run side by side")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--summary-only", action="store_true")
    a = p.parse_args(argv)
    if not a.summary_only:
        variants = a.variant or [("base", ())]
        cells = [Cell(v, flags, c, int(n), e, int(s)) for (v, flags), n, c, e, s in itertools.product(
            variants, a.records.split(","), a.corpora.split(","), a.epsilons.split(","), a.seeds.split(","))]
        todo = [c for c in cells if not c.json_path(a.out).is_file()]
        print(f"{len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run with {a.jobs} jobs", flush=True)
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            failed = [c for c, rc, _ in pool.map(lambda c: run_cell(c, a.out, a.threads, a.test_records), todo)
                      if rc != 0]
        for c in failed:
            print(f"failed: {c.variant}/{c.name} (see {c.json_path(a.out).with_suffix('.log')})")
    print(write_summary(a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
