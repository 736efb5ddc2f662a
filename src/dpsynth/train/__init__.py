"""dpsynth.train"""
