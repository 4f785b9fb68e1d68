"""The error a setting the runner cannot use raises: here, beside the adapters that raise it, so that the code a Ray
worker runs (adapters.remote, with adapters.process and adapters.sandbox) needs nothing outside this package."""


class SettingsError(ValueError):
    """A setting has a value the runner cannot use; the message names the setting."""
