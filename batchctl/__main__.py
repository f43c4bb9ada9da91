"""`python -m batchctl`: the same command as the `batchctl` script."""

from batchctl.cli import main

if __name__ == "__main__":
    main()
