"""`--no-verify`: the option of every command that loads a checkpoint, to skip its SHA-256 checks."""
from __future__ import annotations

import os

import click

from latentlm.checkpoint import NO_VERIFY_ENV


def _skip_checks(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """Turn the checks off for this process and the processes it launches (an environment variable, so
    that every loader, however deep, and every training worker sees it without a new parameter)."""
    if value:
        os.environ[NO_VERIFY_ENV] = "1"


NO_VERIFY = click.option("--no-verify", is_flag=True, expose_value=False, callback=_skip_checks,
                         help="Skip checking the checkpoint's files against their recorded SHA-256 (faster "
                              "loads; a corrupt file is then not caught).")
