"""``python -m diffdiff`` runs the command line."""

from .cli import main

main()
