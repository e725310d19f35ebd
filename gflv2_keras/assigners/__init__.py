"""Training-target assignment: which anchor point learns which ground-truth box (ATSS)."""

from gflv2_keras.assigners.atss import atss_assign

__all__ = ["atss_assign"]
