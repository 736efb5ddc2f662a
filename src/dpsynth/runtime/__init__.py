"""dpsynth.runtime: where and how work runs — ranks (one process or torchrun), device and precision, files that
are whole or absent, progress bars. The lowest layer with `config` and `errors`; imports nothing above it."""
