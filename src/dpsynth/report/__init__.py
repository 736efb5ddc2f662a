"""dpsynth.report"""
