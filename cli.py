"""Run the ``landscape`` command from a checkout without installing: ``python cli.py --help``."""

from landscape.cli import app

if __name__ == "__main__":
    app()
