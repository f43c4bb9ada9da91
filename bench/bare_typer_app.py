"""The baseline for `batchctl --help`: a bare two-command Typer app, set up as batchctl's is."""

from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="bare",
    help="A bare two-command Typer app.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command()
def run(
    name: Annotated[str, typer.Argument(help="What to run.")],
    params: Annotated[Optional[str], typer.Option("--params", help="Params as JSON.")] = None,
) -> None:
    """Run something."""
    print(name, params)


@app.command()
def history(
    limit: Annotated[int, typer.Option("--limit", help="At most N rows.")] = 20,
) -> None:
    """Show what ran."""
    print(limit)


if __name__ == "__main__":
    app()
