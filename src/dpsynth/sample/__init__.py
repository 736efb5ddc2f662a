"""dpsynth.sample"""
