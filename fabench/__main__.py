"""``python -m fabench`` runs the command-line interface."""

from fabench.cli import main

if __name__ == "__main__":
    main()
