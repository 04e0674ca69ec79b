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

from streamlearn.errors import StreamlearnError


class _Group(click.Group):
    """A click group that turns every StreamlearnError into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StreamlearnError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def echo_json(obj) -> None:
    """Print `obj` as indented JSON on stdout (the `--json` output of every command)."""
    import json

    click.echo(json.dumps(obj, indent=2))


def make_console(stderr: bool = False, wide: bool = False):
    """A rich console; `wide` gives piped output a 160-column page.

    Piped output (a file, `less`, a test runner) has no width, and rich would squeeze tables into
    80 columns and cut names; a terminal keeps its real width.
    """
    from rich.console import Console

    if wide and not sys.stdout.isatty():
        return Console(stderr=stderr, width=160)
    return Console(stderr=stderr)


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

    for name in ("engine", "catalogue", "service", "evaluation", "demo", "serve"):
        try:
            importlib.import_module(f"streamlearn.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"streamlearn.cli.{name}":
                raise


_register()
