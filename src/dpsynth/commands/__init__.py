"""dpsynth.commands: what a user runs — `run`, `resume`, `sample`, `evaluate`, `audit`, `demo` — each a short
module calling the stages (or the evaluation) in order. The CLI and the Python API are thin layers over these."""
