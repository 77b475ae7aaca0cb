"""`python -m edgecam` is the `edgecam` command."""

from edgecam.cli import main

main()
