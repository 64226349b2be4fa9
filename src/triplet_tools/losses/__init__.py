"""Triplet-family losses (``TripletLoss``, ``PNLoss``, ``PrimingLoss``, the 0.2.3 functions,
``triplet_batch_all_loss``) and the pair-based losses (``MultiSimilarityLoss``, ``CircleLoss``,
``SoftNearestNeighborLoss``, ``LiftedStructLoss``) and the in-batch softmax losses (``SupConLoss``,
``InfoNCELoss``)."""

from triplet_tools.losses.base import AnchorTriplets, TripletFamilyLoss
from triplet_tools.losses.lifted import LiftedStructLoss
from triplet_tools.losses.pair import PairLoss
from triplet_tools.losses.pn import PNLoss
from triplet_tools.losses.priming import PrimingLoss, triplet_batch_priming_loss
from triplet_tools.losses.reduction import REDUCTIONS
from triplet_tools.losses.similarity import (
    CircleLoss,
    MultiSimilarityLoss,
    SoftNearestNeighborLoss,
)
from triplet_tools.losses.softmax import InfoNCELoss, SupConLoss
from triplet_tools.losses.triplet import (
    TripletLoss,
    triplet_batch_all_loss,
    triplet_batch_hard_loss,
    triplet_batch_semihard_loss,
)

__all__ = [
    "REDUCTIONS",
    "AnchorTriplets",
    "CircleLoss",
    "InfoNCELoss",
    "LiftedStructLoss",
    "MultiSimilarityLoss",
    "PairLoss",
    "SoftNearestNeighborLoss",
    "SupConLoss",
    "PNLoss",
    "PrimingLoss",
    "TripletFamilyLoss",
    "TripletLoss",
    "triplet_batch_all_loss",
    "triplet_batch_hard_loss",
    "triplet_batch_priming_loss",
    "triplet_batch_semihard_loss",
]
