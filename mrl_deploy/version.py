"""The package version, in a leaf module: what a module records in the files it writes (the
manifest, index.json, sharded.json, a Triton repository) comes from here, never from the package's
__init__, which imports those modules lazily (`mrl_deploy.AdaptiveIndex`): an import back would be
a cycle."""

__version__ = "0.1.0"
