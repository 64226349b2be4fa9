"""triplet-tools: online-mined triplet-family losses on Keras 3 (TensorFlow, JAX, PyTorch).

```python
from triplet_tools import triplet_batch_semihard_loss
model.compile("adam", triplet_batch_semihard_loss(margin=0.5))
```
"""

from triplet_tools import layers  # noqa: F401  (registers L2Embedding for load_model)
from triplet_tools import metrics  # noqa: F401  (registers MiningStatistics for load_model)
from triplet_tools.losses import (
    PNLoss,
    PrimingLoss,
    TripletLoss,
    triplet_batch_hard_loss,
    triplet_batch_priming_loss,
    triplet_batch_semihard_loss,
)

__version__ = "1.0.0"

__all__ = [
    "PNLoss",
    "PrimingLoss",
    "TripletLoss",
    "triplet_batch_hard_loss",
    "triplet_batch_priming_loss",
    "triplet_batch_semihard_loss",
]
