"""The installed package's version, written into every metadata and checkpoint file."""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "world-models-rl"


def package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"
