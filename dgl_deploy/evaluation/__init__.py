"""Retrieval evaluation without torch: metrics (R@K, MdR, MnR), re-ranking, and evaluation of a model on a
dataset."""
