"""The package's version, in a module of its own: whatever records it (a report, a model card,
a run's environment) imports it without importing the package's public names."""

__version__ = "0.1.0"
