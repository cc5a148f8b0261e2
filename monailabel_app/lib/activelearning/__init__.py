from lib.activelearning.uncertain import MostUncertain

__all__ = ["MostUncertain"]
