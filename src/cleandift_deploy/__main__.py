"""`python -m cleandift_deploy ...`: the same command line as `cleandift-deploy` (and what
`torchrun -m cleandift_deploy train ...` runs per rank)."""

from .cli import main

if __name__ == "__main__":
    main()
