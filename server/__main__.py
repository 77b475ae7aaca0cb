"""`python -m edgecam.server ...` is `edgecam serve ...`."""

import typer

from edgecam.server.cli import serve

if __name__ == "__main__":
    typer.run(serve)
