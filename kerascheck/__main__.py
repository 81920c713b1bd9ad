"""`python -m kerascheck`: the same command line as `kerascheck`."""

from .cli import entry

if __name__ == "__main__":
    entry()
