"""The package version, in a leaf module: the status document reports it (peer/net/runtime.py)
and ``gossiplearn --version`` prints it, without importing the package's public facade."""

__version__ = "0.1.0"
