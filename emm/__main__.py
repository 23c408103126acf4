"""`python -m emm` is the `emm` command."""

from emm.cli import main

main()
