"""Reward models behind one interface: `score(conversations, responses) -> float64 array`.

Backends (`hf`, `prompted`, `callable`, `http`, `ensemble`) register themselves on import; installed packages
add more through the `rlhf_syco.reward_models` entry-point group. Importing this package, and validating
specs, never imports torch or transformers; the backends load them when a model is first used.
"""

from reward_models.base import (
    DEFAULT_PREAMBLE,
    ENTRY_POINT_GROUP,
    Options,
    RewardModel,
    available,
    build,
    build_all,
    format_conversation,
    register,
    resolved_spec,
    validate_spec,
)
from reward_models import callable_rm, ensemble, hf, http, prompted  # noqa: F401  (importing registers the backends)
from reward_models.hf import encode_for_pm
from reward_models.http import serve

__all__ = [
    "DEFAULT_PREAMBLE",
    "ENTRY_POINT_GROUP",
    "Options",
    "RewardModel",
    "available",
    "build",
    "build_all",
    "encode_for_pm",
    "format_conversation",
    "register",
    "resolved_spec",
    "serve",
    "validate_spec",
]
