"""dpsynth.stages: the typed stages of a run, in the order `dpsynth.commands.run` calls them.

data → model → plan → labels → train → sample → record, with `folder` (where everything goes) and `resume`
(everything an interrupted run is continued from).
"""
