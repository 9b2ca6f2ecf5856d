"""Barrier measurement, pure and Flower-free: a model's ordered layers (``layers``), the barrier
math of docs/BARRIERS.md (``barriers``), layer distances (``distances``), batched evaluation of
many model variants (``evaluator``) and the round hook that measures before aggregation
(``hook``). State dicts in, numbers out."""
