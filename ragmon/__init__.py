"""Internals of the M2.3 monitoring library. Import the public API from ``m2_3_monitoring``."""
