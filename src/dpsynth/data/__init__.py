"""dpsynth.data"""
