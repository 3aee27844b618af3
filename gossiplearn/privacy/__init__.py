"""Privacy, on a peer's own records: differential privacy while training, and an audit of
what a trained model reveals.

- :mod:`gossiplearn.privacy.dp`: record-level DP-SGD through Opacus, opt-in with
  ``[privacy]``; the peer's trainer and config use it.
- :mod:`gossiplearn.privacy.audit`: the membership-inference audit of ``gossiplearn audit``
  and ``gossiplearn sim --audit``, offline, on a peer's checkpoint and data; the figures it
  reports (AUC, TPR at low FPR, the verdict) are :mod:`gossiplearn.privacy.exposure`'s.

The names below are dp's (``gossiplearn.privacy.PrivacyConfig``,
``gossiplearn.privacy.make_private``, ...). This package stays cheap to import (the config code
reads it): neither torch nor Opacus is imported here, and the audit only when imported itself.
"""

from gossiplearn.privacy.dp import (
    INSTALL_HINT,
    PrivacyBudgetSpent,
    PrivacyConfig,
    PrivacyError,
    PrivacyLedger,
    check_delta,
    derive_noise_multiplier,
    make_private,
    privacy_problem,
    random_seed,
    require_opacus,
)

__all__ = [
    "INSTALL_HINT",
    "PrivacyBudgetSpent",
    "PrivacyConfig",
    "PrivacyError",
    "PrivacyLedger",
    "check_delta",
    "derive_noise_multiplier",
    "make_private",
    "privacy_problem",
    "random_seed",
    "require_opacus",
]
