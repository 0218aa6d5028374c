"""The version of exprc: a leaf module that setup.py, the cache, serialize, the renderers and the CLI
read (it imports nothing, so reading it never imports the package)."""

__version__ = "0.1.0"
