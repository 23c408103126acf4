"""`python -m cli` is the `emm` command."""

from cli.main import main

main()
