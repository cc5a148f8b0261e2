"""One operator per step of the UltraAD deploy app."""
