"""Run the ``landscape`` command from a checkout without installing: ``python cli.py --help``."""

from landscape.app.cli import main

if __name__ == "__main__":
    main()
