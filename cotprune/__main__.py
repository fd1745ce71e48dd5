"""`python -m cotprune` (also for `torchrun -m cotprune` and `accelerate launch -m cotprune`)."""

from cotprune.cli import main

if __name__ == "__main__":
    main()
