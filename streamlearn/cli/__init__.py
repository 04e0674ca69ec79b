"""The `streamlearn` command line.

Thin by design: parse, call one function, render. Importing this package never imports torch
(the heavy modules are imported inside the commands that need them), so `status` and `tasks`
answer instantly. Commands live in one module per noun: `engine` (train, backbone, predict on an
artifact), `catalogue` (tasks, storage, db), `service` (submit-task, status, jobs, worker, ...) and
`evaluation` (evaluate and the accuracy matrix), and `serve` (the HTTP server and its dashboard).
"""

from __future__ import annotations

import sys
import traceback

import click

from streamlearn.cli.console import echo_json, make_console, visible
from streamlearn.errors import StreamlearnError

__all__ = ["echo_json", "main", "make_console"]


class _Group(click.Group):
    """A click group that turns every StreamlearnError into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StreamlearnError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {visible(exc)}", err=True)
            sys.exit(2)
        except Exception as exc:
            # A database error that no layer translated (a corrupt or foreign file): one line, exit 2.
            if not _is_database_error(exc):
                raise
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: catalogue unusable: {visible(_one_line(exc))}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def _one_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _is_database_error(exc: BaseException) -> bool:
    # sqlalchemy is imported by the commands that use the catalogue; never import it here for this.
    sa_exc = sys.modules.get("sqlalchemy.exc")
    return sa_exc is not None and isinstance(exc, sa_exc.SQLAlchemyError)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="streamlearn")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """streamlearn: one bottleneck adapter per task on a frozen, shared backbone.

    Tasks (labelled JSONL text datasets) arrive one after another; each gets a fresh Houlsby
    adapter (Houlsby et al. 2019), its own LayerNorms and a head, trained by a worker. The
    backbone never changes, so no task is ever forgotten, and storage grows as K*4Lmd, not K*|w|.

    Configuration comes from environment variables: STREAMLEARN_HOME (default ~/.streamlearn),
    STREAMLEARN_DATABASE_URL, STREAMLEARN_BROKER_URL, STREAMLEARN_ARTIFACTS,
    STREAMLEARN_BACKBONE and STREAMLEARN_DEVICE.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    # Each submodule adds its commands to `main`; imported here so `streamlearn.cli:main` sees all.
    import importlib

    for name in ("engine", "predict", "catalogue", "service", "jobs", "evaluation", "demo", "serve", "fusion"):
        try:
            importlib.import_module(f"streamlearn.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"streamlearn.cli.{name}":
                raise


_register()
