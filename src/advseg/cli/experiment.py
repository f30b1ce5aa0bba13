"""``advseg experiment`` and ``advseg report`` (registered on the app in :mod:`advseg.cli.main`).

Bad input (a config, a folder) is one line ``error: <file>: <problem>`` on stderr and exit status 2.
As in :mod:`advseg.cli.main`, the commands import what they run inside their functions, so that
``advseg --help`` starts without torch, scipy or matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from advseg.cli.common import fail
from advseg.errors import InputError


def experiment(
    config: Annotated[str, typer.Argument(
        help="Experiment YAML, or the name of a packaged one (phantom_six, hippocampus, phantom_table2).")],
    out: Annotated[Path | None, typer.Option(help="Matrix folder (default runs/<name>).")] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder, replacing the config's data:.")] = None,
    list_cells: Annotated[bool, typer.Option(
        "--list-cells", help="Print one shell command per cell (for job arrays) and exit.")] = False,
    cell: Annotated[int | None, typer.Option(help="Run only cell I (numbering of --list-cells).")] = None,
    aggregate_only: Annotated[bool, typer.Option(
        "--aggregate", help="Only aggregate the finished cells into OUT/results.")] = False,
    device: Annotated[str | None, typer.Option(
        help="auto | cpu | cuda | cuda:N (default: the config's).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
    results: Annotated[Path | None, typer.Option(
        help="Folder of committable per-cell JSON results: each finished cell is written there, and "
             "--aggregate builds the tables from these files (into RESULTS/tables).")] = None,
) -> None:
    """Run a matrix of trainings (methods x labeled fractions x seeds x folds), resumable; aggregate it.

    Each cell is an ordinary run folder: trained, its test cases predicted and evaluated. Finished
    cells are skipped, so running the same command again resumes an interrupted matrix.
    """
    from advseg.experiments.aggregate import aggregate_folder
    from advseg.experiments.matrix import ExperimentMatrix, load_matrix_config, planned_cells

    try:
        if aggregate_only and results is not None:
            # committed cell files alone: no dataset, no run folders needed (a fresh clone can do it);
            # the config says which cells are planned, so the tables say which are still missing
            planned = planned_cells(load_matrix_config(config, data=data, check_data=False))
            agg, paths = aggregate_folder(results, planned=planned)
            done, total = agg.finished_cells, agg.total_cells
        else:
            cfg = load_matrix_config(config, data=data)
            matrix = ExperimentMatrix(cfg, out if out is not None else Path("runs") / cfg.name, device=device)
            if list_cells:
                for line in matrix.list_commands(config, data, results):
                    typer.echo(line)
                return
            records: list = []
            if not aggregate_only:
                records = matrix.run([cell] if cell is not None else None, progress=not quiet,
                                     results=results)
                from advseg.training import distributed

                if distributed.world_size() > 1:  # torchrun: every rank trained; rank 0 goes on alone
                    main = distributed.is_main()
                    distributed.shutdown()
                    if not main:
                        return
            else:
                matrix.check_out()
            done, total = matrix.status()
            if done == 0:
                if records:  # nothing trained here: every requested cell's result was already committed
                    typer.echo(f"{len(records)} requested cell{'s' if len(records) > 1 else ''} already in "
                               f"{results}, none trained; tables: advseg experiment {config} --aggregate "
                               f"--results {results}")
                else:
                    typer.echo(f"{matrix.out}: no finished cell yet (0 of {total})")
                return
            if cell is not None and done < total and not aggregate_only:
                typer.echo(f"cell {cell} finished; {done} of {total} cells done in {matrix.out}")
                return
            matrix.write_manifest()
            agg, paths = aggregate_folder(matrix.out)
    except InputError as exc:
        fail(exc)
    from advseg.experiments.aggregate import markdown_table, overview_table

    typer.echo(markdown_table(overview_table(agg, "dsc")))
    typer.echo(f"\n{done} of {total} cells finished; tables in {paths['summary.md'].parent}")


def report(
    run_dir: Annotated[Path, typer.Argument(help="Matrix folder, run folder, or a folder of run folders.")],
    out: Annotated[Path | None, typer.Option(
        help="HTML file to write (default RUN_DIR/report.html).")] = None,
    config: Annotated[str | None, typer.Option(
        help="Experiment config (built-in name or YAML) whose plan a folder of committed cell results "
             "belongs to: the report counts the cells against it and lists the missing ones.")] = None,
) -> None:
    """Write a self-contained HTML report (tables, learning curves, overlays, confidence maps)."""
    from advseg.experiments.matrix import load_matrix_config, planned_cells
    from advseg.experiments.report import write_report

    try:
        planned = None
        if config is not None:
            planned = planned_cells(load_matrix_config(config, check_data=False))
        path = write_report(run_dir, out, planned=planned)
    except InputError as exc:
        fail(exc)
    typer.echo(f"wrote {path}")
