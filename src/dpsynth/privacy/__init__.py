"""dpsynth.privacy"""
