"""triplet-tools: online-mined triplet-family losses on Keras 3 (TensorFlow, JAX, PyTorch).

```python
from triplet_tools import triplet_batch_semihard_loss
model.compile("adam", triplet_batch_semihard_loss(margin=0.5))
```
"""

from triplet_tools._backend import import_problem as _import_problem

# Checked before anything imports Keras: why its backend cannot load, or None.
_BACKEND_PROBLEM = _import_problem()
if _BACKEND_PROBLEM is None:
    from triplet_tools import (
        layers,  # noqa: F401  (registers L2Embedding for load_model)
        metrics,  # noqa: F401  (registers MiningStatistics for load_model)
        tfa,  # noqa: F401  (registers the tfa drop-ins for load_model)
    )
    from triplet_tools.index import Calibration, EmbeddingIndex, Neighbors
    from triplet_tools.losses import (
        CircleLoss,
        InfoNCELoss,
        MultiSimilarityLoss,
        PNLoss,
        PrimingLoss,
        SoftNearestNeighborLoss,
        SupConLoss,
        TripletLoss,
        triplet_batch_all_loss,
        triplet_batch_hard_loss,
        triplet_batch_priming_loss,
        triplet_batch_semihard_loss,
    )
else:  # The command reports it in one line (demo/cli.py); the library's names on first use.

    def __getattr__(name):
        if name in __all__:  # only the public names: submodules must still import
            raise ImportError(f"cannot use triplet_tools.{name}: {_BACKEND_PROBLEM}")
        raise AttributeError(f"module 'triplet_tools' has no attribute {name!r}")


__version__ = "1.0.0"

__all__ = [
    "Calibration",
    "CircleLoss",
    "EmbeddingIndex",
    "InfoNCELoss",
    "MultiSimilarityLoss",
    "Neighbors",
    "PNLoss",
    "PrimingLoss",
    "SoftNearestNeighborLoss",
    "SupConLoss",
    "TripletLoss",
    "triplet_batch_all_loss",
    "triplet_batch_hard_loss",
    "triplet_batch_priming_loss",
    "triplet_batch_semihard_loss",
]
