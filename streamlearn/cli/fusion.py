"""`streamlearn fusion TASK`: a fused task's sources and its mean fusion attention (table, JSON, heatmap).

Reads the catalogue and the artifact's sidecar only (no torch, no backbone).
"""

from __future__ import annotations

import click

from streamlearn.cli import main
from streamlearn.cli.console import echo_json, make_console, plain


def fusion_report(task: str) -> dict:
    """The task's sources (task, sha256, key), stage-1 and fused metrics, pruned sources and attention."""
    from streamlearn import jobs
    from streamlearn.catalogue import lineage
    from streamlearn.catalogue.session import session_scope

    with session_scope(readonly=True) as s:
        return lineage.fusion_report(s, task, jobs.artifact_path)


@main.command("fusion")
@click.argument("task")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, writable=True),
              help="Draw the mean attention per site and source as a heatmap to this PNG file.")
@click.option("--json", "as_json", is_flag=True,
              help="Print {task, sources: [{task, sha256, key}], rank, pruned, stage1, val, test, attention}.")
def fusion_command(task: str, plot_file: str | None, as_json: bool) -> None:
    """Show which earlier tasks a fused TASK attends over, and how much, per adapter site.

    The attention is the mean over the validation set's tokens, measured when the task was trained
    (after --fusion-top pruning, if any); `self` is the task's own adapter.
    """
    report = fusion_report(task)
    if plot_file:
        from streamlearn.heatmap import plot

        plot(task, report["attention"], plot_file)
    if as_json:
        echo_json(report)
        return
    from rich.table import Table

    attention = report["attention"]
    table = Table(title=f"{task}: mean fusion attention on validation")
    table.add_column("site")
    for source in attention["sources"]:
        table.add_column(plain(source), justify="right")
    for site, row in zip(attention["sites"], attention["mean"]):
        table.add_row(site, *("-" if v is None else f"{v:.3f}" for v in row))
    console = make_console(wide=True)
    console.print(table)
    if report["pruned"]:
        console.print(plain(f"pruned by --fusion-top: {', '.join(report['pruned'])}"))
    if plot_file:
        console.print(plain(f"heatmap written to {plot_file}"))
