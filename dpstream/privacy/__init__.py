"""Differential privacy for face identities: mechanisms, per-person noise cache, ledger.

Independent of the video code. See PRIVACY.md for what the guarantee covers.
"""

from dpstream.privacy.cache import Identity, IdentityCache
from dpstream.privacy.config import PrivacyConfig
from dpstream.privacy.fast_laplace import laplace_noise, noise_grid, snap_to_grid
from dpstream.privacy.ledger import Ledger, PersonRecord, default_ledger_path, write_ledger
from dpstream.privacy.mechanisms import EmbeddingError, Mechanism, make_mechanism, project_to_sphere

__all__ = [
    "EmbeddingError",
    "Identity",
    "IdentityCache",
    "Ledger",
    "Mechanism",
    "PersonRecord",
    "PrivacyConfig",
    "default_ledger_path",
    "laplace_noise",
    "make_mechanism",
    "noise_grid",
    "project_to_sphere",
    "snap_to_grid",
    "write_ledger",
]
