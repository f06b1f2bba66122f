"""`python -m forgetctl` is the `forgetctl` command."""

from forgetctl.cli.app import main

main()
