"""The ``dvis`` command: assembles one sub-app per command and maps errors to exit codes.

Exit codes: 0 success (also when nothing was found), 1 runtime error, 2 usage error, 3 inputs on
different grids (change without --align), 4 some inputs of a batch failed (see dynamicvis_cli.errors). Known errors
print one line on stderr; tracebacks appear only with ``--debug``. Nothing here imports torch:
each command imports the library inside its function.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

from dynamicvis_cli._version import __version__
from dynamicvis_cli.cli import bench, change, classify, detect, info, models, segment
from dynamicvis_cli.cli import evaluate, index, search
from dynamicvis_cli.errors import DvisError

GDAL_CACHE_MB = 96

app = typer.Typer(
    name="dvis",
    help="DynamicVis remote-sensing foundation model as shell commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for command in (classify, detect, segment, change, info, bench):
    app.registered_commands.extend(command.app.registered_commands)
app.add_typer(models.app, name="models")
app.registered_commands.extend(search.app.registered_commands + evaluate.app.registered_commands)
app.add_typer(index.app, name="index")
from dynamicvis_cli.cli import data as _data, finetune as _finetune, pretrain as _pretrain  # noqa: E402
app.registered_commands.extend(_finetune.app.registered_commands + _pretrain.app.registered_commands)
app.add_typer(_data.app, name="data")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dvis {__version__}")
        raise typer.Exit()


def _show_versions(value: bool) -> None:
    if value:
        from dynamicvis_cli.cli.versions import versions_text

        typer.echo(versions_text())
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    show_versions: Annotated[
        bool, typer.Option("--show-versions", callback=_show_versions, is_eager=True,
                           help="Print versions of dvis and its main dependencies (for bug reports).")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """DynamicVis remote-sensing foundation model as shell commands.

    Results go to files, one JSON summary per run to stdout, logs to stderr.
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = sys.argv[1:] if argv is None else argv
    # GDAL's block cache defaults to 5% of RAM per process (1.2 GB on 24 GB), in the main
    # process and in every reader worker: cap it so memory does not grow with scene size.
    # A user's own GDAL_CACHEMAX wins.
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
    debug = "--debug" in args
    command = typer.main.get_command(app)
    try:
        # standalone mode: the parser reports usage errors itself (exit 2) and exits.
        command.main(args=args, prog_name="dvis", standalone_mode=True)
    except KeyboardInterrupt:
        sys.stderr.write("dvis: interrupted\n")
        sys.exit(130)
    except DvisError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"dvis: error: {exc}\n")
        sys.exit(exc.exit_code)
    except Exception as exc:  # the one catch-all: unexpected failures, reported in one line
        if debug:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        sys.stderr.write(
            f"dvis: internal error: {type(exc).__name__}: {first} (rerun with --debug for details)\n"
        )
        sys.exit(1)
    sys.exit(0)
