"""CoBra: Complementary Branch weakly supervised semantic segmentation, run as sweeps."""

__version__ = "0.1.0"
