"""Benchmarks and the memory soak (``make bench``, ``make soak``); not part of the installed package."""
