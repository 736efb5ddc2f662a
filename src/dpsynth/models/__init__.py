"""dpsynth.models"""
