"""User-facing errors. Each message names the problem and the fix; the CLI prints it on one line."""


class LatentLMError(Exception):
    """A problem with the user's input, not a bug: bad prompt, config, option or checkpoint."""


class ConfigError(LatentLMError):
    """An invalid config file or value."""


class CheckpointError(LatentLMError):
    """A missing, truncated, corrupt or mismatched checkpoint."""


class PromptError(LatentLMError):
    """A prompt that cannot be turned into a request."""
