"""`python -m dpsynth` (also what `torchrun -m dpsynth` launches)."""

from dpsynth.cli import main

main()
