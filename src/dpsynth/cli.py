"""Command line: a thin layer over the Python API.

`dpsynth run`'s options are generated from `RunConfig`'s fields, so the config file, the flags, the Python API
and `--help` can never disagree. A `DpsynthError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import click
from pydantic_core import PydanticUndefined

from dpsynth.errors import EXIT_USER_ERROR, DpsynthError

RUN_EPILOG = """\b
Examples:
  dpsynth run --data reviews.csv --text-column text --label-columns category,stars --epsilon 4 --out runs/r1
  dpsynth run --config run.toml --epsilon 8           # flags override the TOML file
  dpsynth run --data reviews.csv --epsilon inf --out runs/nodp   # same pipeline without DP, for comparison
  dpsynth run --resume --out runs/r1    # continue an interrupted run with the options stored in its checkpoint
\b
Outputs in --out: synthetic.csv, privacy.json (the privacy ledger), run.json, model/, label_distribution.json
(all covered by the guarantee except run.json's wall-clock times) and data_report.json (exact counts from your
data: keep it private).
"""


def _fail(message: str) -> typing.NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USER_ERROR)


class _Cli(click.Group):
    """Turns user errors into one line and exit code 2; everything else keeps its traceback (it is a bug)."""

    def invoke(self, ctx: click.Context) -> Any:
        previous = _terminate_like_ctrl_c()
        try:
            return super().invoke(ctx)
        except DpsynthError as exc:
            _fail(str(exc))
        except _Interrupted as exc:
            _advise_once(f"interrupted; {exc}")
            sys.exit(130)
        except KeyboardInterrupt:
            _advise_once(f"interrupted; {_how_to_continue(ctx.invoked_subcommand)}")
            sys.exit(130)
        finally:
            if previous is not _UNCHANGED:
                signal.signal(signal.SIGTERM, previous)


def is_rank_zero() -> bool:
    """True in a plain process and on torchrun's rank 0 (RANK is set by torchrun), where summaries are printed;
    read from the environment, so that `dpsynth --help` does not load torch."""
    return os.environ.get("RANK", "0") == "0"


def _advise_once(message: str) -> None:
    """Print how to continue once per job: under torchrun every rank is stopped together, and K copies of the same
    advice would bury rank 0's."""
    if is_rank_zero():
        click.echo(message, err=True)


def _terminate_like_ctrl_c() -> Any:
    """SIGTERM (`kill`, a scheduler's time limit, torchrun stopping a failed job) gets Ctrl-C's path: the same
    advice on how to continue, instead of a silent exit 143. Returns the handler it replaced."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:  # a parent that chose to ignore it keeps that
        return _UNCHANGED
    previous = signal.signal(signal.SIGTERM, handler)
    return signal.SIG_DFL if previous is None else previous  # None: set outside Python; restore the default


_UNCHANGED = object()


class _Interrupted(Exception):
    """Ctrl-C, with the command's own advice on how to continue."""


def _how_to_continue(name: str | None) -> str:
    """What to do after Ctrl-C, for the command that was interrupted (each resumes differently, or not at all)."""
    if name == "run":
        return "continue from the last checkpoint with `dpsynth run --resume --out DIR`"
    if name == "sample":
        return "rerun the same command: it appends the missing records"
    if name == "audit":
        return "rerun the same command with --resume to continue"
    if name == "demo":
        return "rerun the same command"
    return "nothing was written that needs cleaning up; rerun the command"


def _run_interrupted(out: Path, *, private: bool = True) -> _Interrupted:
    from dpsynth.stages.folder import RunFolder

    if not private:
        return _Interrupted("a run without DP (--epsilon inf) keeps no checkpoint, so start it again with "
                            "--overwrite")
    if not RunFolder(out).checkpoint.is_dir():
        return _Interrupted("no checkpoint was written yet (one every --checkpoint-every steps), so start again "
                            "with --overwrite: the interrupted run released nothing")
    return _Interrupted(f"continue with `dpsynth run --resume --out {out}` (the run's options are stored with "
                        "its checkpoint)")


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="dpsynth")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="CPU threads for torch (default: one per core). On a machine other jobs share, fewer threads "
                   "than cores is often faster.")
def main(threads: int | None) -> None:
    """dpsynth: a synthetic copy of a private labelled text dataset, with a differential-privacy guarantee.

    \b
    The recipe: fine-tune a pretrained language model with DP-SGD on "control codes + text" (the labels
    written as a prefix), then sample as many synthetic records as you want. Everything after training is
    post-processing, so the synthetic data carries the same (ε, δ) guarantee, shown in privacy.json.

    \b
    Start with `dpsynth demo`, then `dpsynth run --help`.
    """
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    # Library deprecation chatter (transformers/peft) is for developers, not for someone running a job.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, is_flag) for a RunConfig field annotation."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _click_type(args[0])
    if origin is Literal:
        return click.Choice([str(a) for a in get_args(annotation)]), False
    if annotation is bool:
        return None, True
    if annotation is int:
        return click.INT, False
    if annotation is float:
        return click.FLOAT, False
    if annotation is Path:
        return click.Path(path_type=Path), False
    return click.STRING, False


def _options_from(model_cls: Any, *, with_config_file: bool = False) -> Any:
    """Click options generated from a pydantic model's fields (name, type, description, default)."""

    def decorate(func: Any) -> Any:
        for name, fld in reversed(list(model_cls.model_fields.items())):
            flag = "--" + name.replace("_", "-")
            ctype, is_flag = _click_type(fld.annotation)
            help_text = fld.description or ""
            if get_origin(fld.annotation) is list or fld.annotation == list[str]:
                help_text += " Comma-separated."
            if name == "epsilon":
                ctype = click.STRING  # accepts 'inf'
            if fld.default not in (None, PydanticUndefined) and not is_flag and not isinstance(fld.default, list):
                help_text += f"  [default: {fld.default}]"
            if is_flag:
                if isinstance(fld.default, bool):  # say which side is the default (click cannot: default=None)
                    help_text += f"  [default: {flag if fld.default else '--no-' + flag[2:]}]"
                opt = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
            else:
                opt = click.option(flag, name, type=ctype, default=None, help=help_text)
            func = opt(func)
        if with_config_file:
            func = click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                                help="TOML file with any of these options, e.g. `epsilon = 8`, "
                                     "`label-columns = [\"a\", \"b\"]` (flags override it; paths in it are "
                                     "relative to the working directory).")(func)
        return func

    return decorate


def _run_options(func: Any) -> Any:
    from dpsynth.config import RunConfig

    return _options_from(RunConfig, with_config_file=True)(func)


def _evaluate_options(func: Any) -> Any:
    from dpsynth.evaluate.config import EvaluateConfig

    return _options_from(EvaluateConfig)(func)


@main.command("run", epilog=RUN_EPILOG)
@_run_options
def run_cmd(config_file: Path | None, **flags: Any) -> None:
    """Train a DP model on a private table and write a synthetic copy with its privacy report.

    Needs --data and --out (on the command line or in --config); --resume needs only --out.
    """
    from dpsynth.commands.run import run
    from dpsynth.stages.resume import run_config_from_sources

    config = run_config_from_sources(config_file, flags)
    try:
        result = run(config)
    except KeyboardInterrupt:
        raise _run_interrupted(config.out, private=config.private) from None
    if is_rank_zero():  # under torchrun, one summary (rank 0 wrote the outputs)
        result.print_summary()


@main.command("evaluate", epilog="""\b
Example:
  dpsynth evaluate --run runs/r1 --real test.csv --train train.csv --label-columns sentiment --out runs/r1/eval
""")
@_evaluate_options
def evaluate_cmd(**flags: Any) -> None:
    """How useful and how leaky is a synthetic dataset? Writes metrics.json and a self-contained report.html.

    Utility: classifiers trained on synthetic data, tested on real held-out data (and trained on real --train
    for comparison). Fidelity: embedding precision/recall, FID, MAUVE, lengths, labels, n-grams. Leakage:
    copied n-grams and nearest-neighbour distances to --train. The report opens with the run's privacy guarantee.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from dpsynth.commands.evaluate import evaluate_synthetic, make_config

    result = evaluate_synthetic(make_config(**flags))
    table = Table(title="dpsynth evaluate")
    for col in ("metric", "value", "good is"):
        table.add_column(col)
    for row in result.summary_rows():
        table.add_row(*(escape(cell) for cell in row))  # a label column named "[x]" is text, not markup
    console = Console()
    console.print(table)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"metrics: {result.metrics_path}\nreport:  {result.report_path}")


def _audit_options(func: Any) -> Any:
    from dpsynth.evaluate.audit_config import AuditConfig

    return _options_from(AuditConfig)(func)


@main.command("audit", epilog="""\b
Example:
  dpsynth audit --data reviews.csv --label-columns sentiment --epsilons 4,inf --out audits/a1
""")
@_audit_options
def audit_cmd(**flags: Any) -> None:
    """Measure leakage: plant canaries (names, addresses, phones, emails, plates) up to 1/10/100 times (fewer on
    small tables; see --repetitions), train with and without DP, and report how each secret ranks among look-alikes
    (--num-candidates), its exposure, whether it appears verbatim in the synthetic data, and a membership-inference
    AUC.

    --out receives a copy of your data with canaries (private: keep it where the data lives).
    """
    from rich.console import Console

    from dpsynth.commands.audit import make_audit_config, print_audit_summary, run_audit

    print_audit_summary(run_audit(make_audit_config(**flags), console=Console(stderr=True)))


@main.command("sample", epilog="""\b
Example:
  dpsynth sample --run runs/r1 --num 100000 --out runs/r1/more.jsonl
""")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True, help="Folder of a finished run.")
@click.option("--num", "--num-samples", "num", type=int, required=True,
              help="Synthetic records to write.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output file: .csv, .jsonl or .parquet.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed (same seed → same records).")
@click.option("--label-distribution", default=None,
              help="Default: the run's label mix (label_distribution.json). 'uniform' or a public CSV/JSON of "
                   "label weights instead.")
@click.option("--top-k", type=click.IntRange(min=0), default=None,
              help="Top-k, 0 to disable (default: the run's setting).")
@click.option("--top-p", type=float, default=None, help="Nucleus mass (default: the run's setting).")
@click.option("--temperature", type=float, default=None, help="Temperature (default: the run's setting).")
@click.option("--repetition-penalty", type=float, default=None, help="Repetition penalty (default: the run's).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Tokens per record (default: the run's).")
@click.option("--min-new-tokens", type=click.IntRange(min=0), default=None,
              help="Tokens before a record may end (default: the run's; 1: never before its first token).")
@click.option("--batch-size", "--sample-batch-size", "batch_size", type=click.IntRange(min=1), default=None,
              help="Prompts per batch (default: chosen by device).")
@click.option("--drop-duplicates/--keep-duplicates", " /--no-drop-duplicates", default=False, show_default=True,
              help="Remove exact duplicate records and redraw them with the same labels (free post-processing; "
                   "counts reported).")
@click.option("--overwrite/--no-overwrite", default=False, show_default=True,
              help="Replace --out instead of resuming it.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to sample (auto: CUDA when available).")
def sample_cmd(run_dir: Path, num: int, out: Path, **kwargs: Any) -> None:
    """More synthetic records from a finished run, at no extra privacy cost (post-processing).

    Resumable: re-running the same command after an interruption appends the missing records.
    """
    from rich.console import Console

    from dpsynth.commands.sample import sample_from_run

    if num < 1:
        raise DpsynthError("--num (--num-samples) must be at least 1")
    report = sample_from_run(run_dir, num, out, **kwargs)
    if not is_rank_zero():  # under torchrun, one summary (every rank returns the same report)
        return
    Console().print(_sample_summary(report, out))


def _sample_summary(report: dict[str, Any], out: Path) -> str:
    """One line that accounts for every requested record: written, resumed, or dropped (and why)."""
    written, requested = report.get("rows_written", 0), report.get("requested", 0)
    line = f"{out}: {written} of {requested} records"
    if report.get("resumed_rows"):
        line += f" ({report['resumed_rows']} already there)"
    dropped = [f"{report[k]} {what}" for k, what in (("dropped_empty", "empty"),
                                                    ("dropped_duplicates", "duplicate"))
               if report.get(k)]
    if dropped:
        line += f"; dropped {' and '.join(dropped)} generations (free post-processing)"
        rounds = report.get("topup_rounds", 0)
        if rounds:
            line += f" and redrew them with the same labels in {rounds} top-up round{'s' if rounds > 1 else ''}"
        short = requested - written
        if 0 < short < requested:
            line += (f"; {short} label draw{'s' if short > 1 else ''} still without a record (a top-up round kept "
                     "nothing new, or the 5 rounds were used up): sample more with a new --seed if you need them")
    if report.get("generated_this_run"):
        line += (f"; {report.get('records_per_s', 0):.1f} records/s, {report.get('tokens_per_s', 0):.0f} tokens/s")
    if written == 0:
        line += ". Nothing was written: every generation was empty or a duplicate; check the decoding settings"
    return line


@main.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True,
              help="Folder for the demo's data copy and run.")
@click.option("--records", type=int, default=1000, show_default=True, help="Training records to use.")
@click.option("--epsilon", type=str, default="4", show_default=True, help="Target ε ('inf' for no DP).")
@click.option("--num-samples", type=int, default=100, show_default=True, help="Synthetic records to write.")
@click.option("--overwrite/--no-overwrite", default=True, show_default=True, help="Replace an earlier demo run.")
def demo_cmd(out: Path, records: int, epsilon: str, num_samples: int, overwrite: bool) -> None:
    """The whole pipeline on real public data (Rotten Tomatoes review snippets) with the bundled SmolLM2-135M.

    Sized to finish in minutes on a 2-core CPU; prints where the outputs are and a few synthetic reviews.
    """
    from dpsynth.commands.demo import run_demo

    run_demo(out=out, records=records, epsilon=epsilon, num_samples=num_samples, overwrite=overwrite)


if __name__ == "__main__":  # pragma: no cover
    main()
