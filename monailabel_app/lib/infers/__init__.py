from lib.infers.ultraad import UltraADInfer

__all__ = ["UltraADInfer"]
