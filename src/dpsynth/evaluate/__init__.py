"""dpsynth.evaluate"""
