"""Command line: a thin layer over the Python API.

`dpsynth run`'s options are generated from `RunConfig`'s fields, so the config file, the flags, the Python API
and `--help` can never disagree. A `DpsynthError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
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
\b
Outputs in --out: synthetic.csv, privacy.json (the privacy ledger), run.json, model/.
"""


def _fail(message: str) -> typing.NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USER_ERROR)


class _Cli(click.Group):
    """Turns user errors into one line and exit code 2; everything else keeps its traceback (it is a bug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DpsynthError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            click.echo("interrupted; a DP run can be continued with --resume", err=True)
            sys.exit(130)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="dpsynth")
def main() -> None:
    """dpsynth: a synthetic copy of a private labelled text dataset, with a differential-privacy guarantee.

    \b
    The recipe: fine-tune a pretrained language model with DP-SGD on "control codes + text" (the labels
    written as a prefix), then sample as many synthetic records as you want. Everything after training is
    post-processing, so the synthetic data carries the same (ε, δ) guarantee, shown in privacy.json.

    \b
    Start with `dpsynth demo`, then `dpsynth run --help`.
    """
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


def _run_options(func: Any) -> Any:
    from dpsynth.config import RunConfig

    for name, fld in reversed(list(RunConfig.model_fields.items())):
        flag = "--" + name.replace("_", "-")
        ctype, is_flag = _click_type(fld.annotation)
        help_text = fld.description or ""
        if name == "label_columns":
            help_text += " Comma-separated."
        if name == "epsilon":
            ctype = click.STRING
        if fld.default not in (None, PydanticUndefined) and not is_flag:
            help_text += f"  [default: {fld.default}]"
        if is_flag:
            opt = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
        else:
            opt = click.option(flag, name, type=ctype, default=None, help=help_text)
        func = opt(func)
    return click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                        help="TOML file with any of these options (flags override it).")(func)


@main.command("run", epilog=RUN_EPILOG)
@_run_options
def run_cmd(config_file: Path | None, **flags: Any) -> None:
    """Train a DP model on a private table and write a synthetic copy with its privacy report.

    Needs --data and --out (on the command line or in --config).
    """
    from dpsynth.config import config_from_sources
    from dpsynth.pipeline import run
    from dpsynth.summary import print_run_summary

    config = config_from_sources(config_file, flags)
    result = run(config)
    print_run_summary(result)


@main.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True,
              help="Folder for the demo's data copy and run.")
@click.option("--records", type=int, default=2000, show_default=True, help="Training records to use.")
@click.option("--epsilon", type=str, default="4", show_default=True, help="Target ε ('inf' for no DP).")
@click.option("--num-samples", type=int, default=200, show_default=True, help="Synthetic records to write.")
@click.option("--overwrite/--no-overwrite", default=True, show_default=True, help="Replace an earlier demo run.")
def demo_cmd(out: Path, records: int, epsilon: str, num_samples: int, overwrite: bool) -> None:
    """The whole pipeline on real public data (Rotten Tomatoes review snippets) with the bundled SmolLM2-135M.

    Sized to finish in minutes on a 2-core CPU; prints where the outputs are and a few synthetic reviews.
    """
    from dpsynth.demo import run_demo

    run_demo(out=out, records=records, epsilon=epsilon, num_samples=num_samples, overwrite=overwrite)


if __name__ == "__main__":  # pragma: no cover
    main()
