"""Public ops. Each dispatches to the compiled kernel of its device (torch.ops.dgnerf.*) and falls
back to its pure-PyTorch twin in dgnerf.ops.reference when the extension or the kernel is missing."""
from dgnerf.ops._common import Precision, all_finite, checks, set_checks
from dgnerf.ops.hashgrid import hash_encode, hash_grid_resolutions, init_hash_table
from dgnerf.ops.integrate import integrate_features
from dgnerf.ops.mlp import FieldWeights, field_mlp, fold_conditioning
from dgnerf.ops.sampling import sample_rays

__all__ = ["FieldWeights", "Precision", "all_finite", "checks", "field_mlp", "fold_conditioning", "hash_encode",
           "hash_grid_resolutions", "init_hash_table", "integrate_features", "sample_rays", "set_checks"]
