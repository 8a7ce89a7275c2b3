"""The score's one error: a weight or word-list file that is missing or does not read."""


class ScoreFileError(ValueError):
    """One line naming the file, what it is for and the fix."""
