"""The package version, in a leaf module: modules that record it (index.json, sharded.json) import
it from here, not from the package root, which imports them back lazily (`mrl_deploy.AdaptiveIndex`)."""

__version__ = "0.1.0"
