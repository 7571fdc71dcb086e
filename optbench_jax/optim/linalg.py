"""Shared linear-algebra kernels of the matrix optimizers, all jit-compiled.

* Newton-Schulz orthogonalisation (Muon, D-Muon, Scion).
* Eigenbasis of Kronecker factors: first basis by ``eigh``, refresh by one power
  iteration + QR with re-sorting (SOAP).

Every kernel takes any number of leading batch axes (stacked layers, experts)
and treats the last two axes as the matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# ---------------------------------------------------------------------------
# Newton-Schulz orthogonalisation
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# Eigenbasis (SOAP)
# ---------------------------------------------------------------------------
