"""The error every layer raises for a setting bnlab refuses; the command line turns it into one
line naming the key, the value and the fix."""


class ConfigError(ValueError):
    """A configuration value that bnlab refuses, with the field and the allowed values."""
