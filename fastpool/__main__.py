"""`python -m fastpool`: the command line (see fastpool.cli)."""

from .cli import entry

if __name__ == "__main__":
    entry()
