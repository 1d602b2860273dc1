"""Errors that the CLI reports as one line, without a traceback."""


class MempoolError(Exception):
    """A problem the user can fix: bad input, missing data, a bad checkpoint."""


class ConfigError(MempoolError):
    """A configuration value that is impossible."""


class DataError(MempoolError):
    """A dataset that cannot be found, downloaded or read."""


class CheckpointError(MempoolError):
    """A checkpoint file that is missing, truncated or not one of ours."""


class RunDirError(MempoolError):
    """A run directory that holds another run, or is in use."""
