"""The one exception type for mistakes a user can fix: the CLI prints it as one line, exit 2."""


class UserError(Exception):
    """A problem with the user's input (config, data files, folders) and how to fix it."""


class StoppedElsewhere(Exception):
    """Another process of a several-process run failed and reports why; this one leaves quietly."""
