from lib.trainers.ultraad import UltraADTrain

__all__ = ["UltraADTrain"]
