"""Secrets are named in the config as {env = "NAME"} and read from the environment."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr


def secret_from_env(value: Any) -> SecretStr:
    """Resolve ``{env = "NAME"}`` to a SecretStr; refuse secrets written in the file."""
    if isinstance(value, SecretStr):
        return value
    if isinstance(value, Mapping):
        if set(value) != {"env"} or not isinstance(value["env"], str):
            raise ValueError('write a secret as {env = "VARIABLE_NAME"}')
        name = value["env"]
        found = os.environ.get(name)
        if not found:
            raise ValueError(f"environment variable {name} is not set")
        return SecretStr(found)
    raise ValueError(
        'secrets are read from the environment, never the file: use {env = "VARIABLE_NAME"}'
    )


# A secret named in the file as {env = "NAME"} and read from the environment.
EnvSecret = Annotated[SecretStr, BeforeValidator(secret_from_env)]
