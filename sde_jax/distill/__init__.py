"""One- and few-step generation from a diffusion model: consistency models and progressive distillation.

=============== ======================================================================================
module          job
=============== ======================================================================================
``consistency`` the consistency function with its built-in boundary condition, CD and CT losses, the
                level discretisations, multistep consistency sampling (``sample(..., "consistency")``)
``progressive`` progressive distillation: the two-teacher-steps target and the round's loss
``fit``         the small training loop both use (EMA, target network, curriculum step)
=============== ======================================================================================
"""

from sde_jax.distill.consistency import (ConsistencyModel, cd_loss, consistency_model, ct_levels, ct_loss, karras_levels, lognormal_index, pseudo_huber,
                                         squared_l2)
from sde_jax.distill.fit import fit
from sde_jax.distill.progressive import pd_loss, two_step_target

__all__ = ["ConsistencyModel", "consistency_model", "cd_loss", "ct_loss", "ct_levels", "karras_levels",
           "lognormal_index", "pseudo_huber", "squared_l2", "pd_loss", "two_step_target",
           "fit"]
