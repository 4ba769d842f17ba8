"""hoigen: a command-line factory for synthetic 3D hand-object interaction data."""

__version__ = "0.1.0"
