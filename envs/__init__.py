"""The real world: env construction and preprocessing, rollout collection, the episode format.

This layer knows nothing of the learned models; a policy comes in as a callable.
"""

from envs.errors import ConfigMismatchError, CorruptFileError, UserError
from envs.make import make_env

__all__ = ["ConfigMismatchError", "CorruptFileError", "UserError", "make_env"]
