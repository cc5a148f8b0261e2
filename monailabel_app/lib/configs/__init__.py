from lib.configs.ultraad import ModelProvider, UltraADSettings

__all__ = ["ModelProvider", "UltraADSettings"]
