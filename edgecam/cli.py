"""The `edgecam` command. Each part registers its own commands; heavy imports stay inside them."""

from __future__ import annotations

import typer

from edgecam.client import cli as client_cli
from edgecam.compiler import cli as compiler_cli
from edgecam.server import cli as server_cli

app = typer.Typer(
    name="edgecam",
    help="Compress and compile neural networks for smart cameras, serve them, and watch them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
for command in compiler_cli.app.registered_commands:
    app.registered_commands.append(command)
app.command()(server_cli.serve)
app.command()(client_cli.watch)
app.command()(client_cli.infer)
app.command()(client_cli.status)


@app.command()
def demo(
    frames: int = typer.Option(300, help="How many streamed predictions to collect."),
    workdir: str = typer.Option(None, help="Where the compiled artifact is cached [~/.cache/edgecam]."),
) -> None:
    """Compile the bundled model for this host, serve it on a synthetic camera, stream and report."""
    from edgecam.demo import run_demo

    raise typer.Exit(run_demo(frames=frames, workdir=workdir))


def main() -> None:
    app()
