"""CUDA smoke checks: the GPU code paths that the CPU test suite cannot reach, each checked against a reference.

Run by bench/gpu/run_all.sh on a lent GPU (and with --device cpu in its dry run, where the compiled step is not
used). Every check is independent; one failing does not stop the others. Results (pass/fail, numbers, seconds)
go to --out as JSON; the exit code is 1 if any check failed.

Checks:
- engine_fp32: ClippingEngine's per-example norms and clipped sums on the device equal a brute-force loop over
  examples (Llama with tied embeddings, GPT-2 with Conv1D and position embeddings, LoRA) — TF32 off, fp32.
- engine_bf16: the same under bf16 autocast (the GPU default): relative error of norms and sums vs fp32 brute force.
- sample_static_greedy: greedy decoding through the static KV cache + `torch.compile(mode="reduce-overhead")`
  decode step (CUDA graphs) gives the tokens of the eager loop and of `model.generate`; the "auto" setting really
  took the static path (no silent fallback); compile time, second-call time, and dynamo's counters (graphs
  compiled, CUDA-graph skips: a skip means the "reduce-overhead" step runs without CUDA graphs).
- sample_static_seeded: sampled decoding on that path is reproducible with a seed.
- pipeline_e2e: `dpsynth.pipeline.run` on a tiny model folder (DP ε=4, LoRA, bf16 on CUDA) writes the synthetic
  CSV and an honest privacy.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `tests` helpers (tiny models, brute force) are reused, not copied

import torch  # noqa: E402


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_engine_fp32(dev: torch.device) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from tests.privacy.test_engine import brute_force, engine_sum, make_batch, tiny_gpt2, tiny_llama

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    lora = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    for n, p in lora.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    cases = {"llama_tied": (tiny_llama(), 0.05), "llama_tied_noclip": (tiny_llama(), 1e9),
             "gpt2": (tiny_gpt2(), 0.05), "llama_lora": (lora, 0.01)}
    out: dict[str, Any] = {"ok": True}
    for name, (model, clip) in cases.items():
        model = model.to(dev)
        batch = {k: v.to(dev) for k, v in make_batch().items()}
        ref_norms, ref = brute_force(model, batch, clip)
        norms, got = engine_sum(model, batch, clip)
        norm_err = _rel(norms, ref_norms)
        sum_err = max(_rel(got[n], ref[n]) for n in ref)
        on_device = all(t.device.type == dev.type for t in got.values())
        ok = norm_err < 2e-4 and sum_err < 2e-4 and on_device and ref.keys() == got.keys()
        out[name] = {"norm_rel_err": norm_err, "sum_rel_err_max": sum_err, "on_device": on_device, "ok": ok}
        out["ok"] &= ok
    return out


def check_engine_bf16(dev: torch.device) -> dict[str, Any]:
    from tests.privacy.test_engine import brute_force, make_batch, tiny_llama

    from dpsynth.privacy.engine import ClippingEngine
    from dpsynth.train.dp_trainer import autocast_for
    from dpsynth.train.loss import per_example_lm_loss

    model = tiny_llama().to(dev)
    batch = {k: v.to(dev) for k, v in make_batch().items()}
    ref_norms, ref = brute_force(model, batch, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    engine = ClippingEngine(model, 0.05).attach()
    b, t = batch["input_ids"].shape
    with engine.microbatch(b, t), autocast_for(dev, "bf16"):
        losses = per_example_lm_loss(model(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).logits, batch["labels"])
    norms = engine.backward(losses)
    sum_err = max(_rel(engine.clipped_sum(p), ref[names[id(p)]]) for p in engine.params)
    finite = all(bool(torch.isfinite(engine.clipped_sum(p)).all()) for p in engine.params)
    engine.detach()
    norm_err = _rel(norms, ref_norms)
    autocast = dev.type == "cuda"
    # bf16 has 8 mantissa bits (~0.4% per rounding); a few percent over a tiny model's gradients is expected.
    ok = finite and (norm_err < 0.05 and sum_err < 0.1 if autocast else norm_err < 2e-4)
    return {"ok": ok, "autocast": autocast, "norm_rel_err": norm_err, "sum_rel_err_max": sum_err, "finite": finite}


def _static_setting(dev: torch.device) -> bool | str:
    # On CUDA "auto" is what users get (static + compiled, silent fallback on failure); on CPU only True takes it.
    return "auto" if dev.type == "cuda" else True


def check_sample_static_greedy(dev: torch.device) -> dict[str, Any]:
    from tests.sample.conftest import make_model, make_tokenizer
    from tests.sample.test_generate import PROMPTS, _hf_reference

    from dpsynth.sample import generate as g

    torch.backends.cuda.matmul.allow_tf32 = False
    tok = make_tokenizer()
    model = make_model(tok, init_range=0.5).to(dev)
    kw = dict(top_k=1, max_new_tokens=12, batch_size=4)
    eager = g.generate_token_ids(model, tok, PROMPTS, static_cache=False, **kw)
    g.release_static_decoder()
    g._STATIC.pop("failed", None)
    stats = g.GenerationStats()
    t0 = time.perf_counter()
    static = g.generate_token_ids(model, tok, PROMPTS, static_cache=_static_setting(dev), stats=stats, **kw)
    first_s = time.perf_counter() - t0
    stats2 = g.GenerationStats()
    t0 = time.perf_counter()
    again = g.generate_token_ids(model, tok, PROMPTS, static_cache=_static_setting(dev), stats=stats2, **kw)
    second_s = time.perf_counter() - t0
    failed = bool(g._STATIC.get("failed"))
    g.release_static_decoder()
    with torch.inference_mode():
        refs = [_hf_reference(model, tok, p, 12) for p in PROMPTS]
    ok = (static == eager == again) and eager == refs and stats.backend == "hf-static" and not failed
    return {"ok": ok, "backend": stats.backend, "fell_back": failed, "static_equals_eager": static == eager,
            "eager_equals_generate": eager == refs, "repeat_equal": again == static,
            "first_call_s_incl_compile": first_s, "second_call_s": second_s, **_dynamo_counters()}


def _dynamo_counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"graphs_compiled": int(counters["stats"].get("unique_graphs", 0)),
            "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0))}


def check_sample_static_seeded(dev: torch.device) -> dict[str, Any]:
    from tests.sample.conftest import make_model, make_tokenizer
    from tests.sample.test_generate import PROMPTS

    from dpsynth.sample import generate as g

    tok = make_tokenizer()
    model = make_model(tok, init_range=0.5).to(dev)
    kw = dict(top_k=50, top_p=0.9, max_new_tokens=16, batch_size=8, static_cache=_static_setting(dev))
    stats = g.GenerationStats()
    a = g.generate_token_ids(model, tok, PROMPTS * 3, seed=7, stats=stats, **kw)
    b = g.generate_token_ids(model, tok, PROMPTS * 3, seed=7, **kw)
    c = g.generate_token_ids(model, tok, PROMPTS * 3, seed=8, **kw)
    g.release_static_decoder()
    ok = a == b and a != c and stats.backend == "hf-static"
    return {"ok": ok, "backend": stats.backend, "same_seed_equal": a == b, "other_seed_differs": a != c,
            **_dynamo_counters()}


def _write_reviews(path: Path, n: int = 96) -> None:
    """Made-up labelled reviews (no real data on the GPU machine): two sentiments, templated from word lists."""
    import random

    import pandas as pd

    rng = random.Random(0)
    good = ["great", "lovely", "friendly", "tasty", "quick", "warm", "clean"]
    bad = ["cold", "slow", "rude", "bland", "dirty", "noisy", "late"]
    things = ["coffee", "staff", "soup", "room", "service", "bread", "music"]
    rows = []
    for i in range(n):
        pos = i % 2 == 0
        words = good if pos else bad
        text = " ".join(f"The {rng.choice(things)} was {rng.choice(words)}." for _ in range(rng.randint(2, 5)))
        rows.append({"text": text, "sentiment": "positive" if pos else "negative"})
    pd.DataFrame(rows).to_csv(path, index=False)


def check_pipeline_e2e(dev: torch.device) -> dict[str, Any]:
    import pandas as pd

    from dpsynth.config import RunConfig
    from dpsynth.models.tiny import save_tiny_model_folder
    from dpsynth.pipeline import run

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "reviews.csv"
        _write_reviews(data)
        model = save_tiny_model_folder(tmp_path / "tiny", kind="llama")
        out = tmp_path / "run"
        cfg = RunConfig(data=data, text_column="text", label_columns=["sentiment"], model=str(model), out=out,
                        epsilon=4.0, epochs=1.0, batch_size=16, physical_batch_size=8, max_tokens=48,
                        num_samples=48, max_new_tokens=16, sample_batch_size=32, checkpoint_every=2,
                        device=dev.type, precision="bf16" if dev.type == "cuda" else "fp32")
        t0 = time.perf_counter()
        result = run(cfg)
        seconds = time.perf_counter() - t0
        synthetic = pd.read_csv(result.synthetic_path)
        ledger = json.loads(result.privacy_path.read_text())
        run_json = json.loads(result.run_path.read_text())
    ok = len(synthetic) == 48 and math.isfinite(result.epsilon) and result.epsilon <= 4.0 + 1e-9
    ok &= [m["name"] for m in ledger["mechanisms"]] == ["dp-sgd", "gaussian"]
    sampling = run_json.get("sampling") or {}
    return {"ok": ok, "seconds": seconds, "rows": len(synthetic), "epsilon": result.epsilon,
            "device": run_json.get("device"), "precision": run_json.get("precision"),
            "sampling": {k: v for k, v in sampling.items() if isinstance(v, (int, float, str))},
            "timings": result.timings}


CHECKS: dict[str, Callable[[torch.device], dict[str, Any]]] = {
    "engine_fp32": check_engine_fp32,
    "engine_bf16": check_engine_bf16,
    "sample_static_greedy": check_sample_static_greedy,
    "sample_static_seeded": check_sample_static_seeded,
    "pipeline_e2e": check_pipeline_e2e,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--checks", default=",".join(CHECKS), help="comma-separated subset of: " + ", ".join(CHECKS))
    p.add_argument("--out", type=Path, default=Path("smoke.json"))
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available to torch", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"device": str(dev), "torch": torch.__version__, "cuda": torch.version.cuda,
                              "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None, "checks": {}}
    for name in [c.strip() for c in args.checks.split(",") if c.strip()]:
        t0 = time.perf_counter()
        try:
            res = CHECKS[name](dev)
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1500],
                   "traceback_tail": traceback.format_exc()[-2500:]}
        res["wall_s"] = round(time.perf_counter() - t0, 2)
        report["checks"][name] = res
        print(f"[smoke] {name}: {'PASS' if res['ok'] else 'FAIL'} ({res['wall_s']:.1f} s) "
              + json.dumps({k: v for k, v in res.items() if k not in ("ok", "wall_s", "traceback_tail")},
                           default=str)[:600], flush=True)
        if not res["ok"] and "traceback_tail" in res:
            print(res["traceback_tail"], flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")  # partial results survive a timeout
    report["ok"] = all(r["ok"] for r in report["checks"].values())
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
