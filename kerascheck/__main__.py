"""`python -m kerascheck`: the same command line as `kerascheck`."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="kerascheck")
