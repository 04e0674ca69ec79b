"""`python -m streamlearn ...` runs the command line (used to start worker subprocesses)."""

from streamlearn.cli import main

if __name__ == "__main__":
    main(prog_name="streamlearn")
