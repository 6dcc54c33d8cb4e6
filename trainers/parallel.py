"""Data parallelism for the reference trainers: ``DataParallel``.

This process's place in an ``mx.distributed`` group, and the one scheme every
trainer follows (see the class): each rank takes its shard of a step, the
normalisers are global, and the gradients are averaged.  ``core.Trainer``
holds one (``trainer.dp``) and hands it to a spec's ``step_stats``.
"""

import mlx.core as mx
import mlx.nn as nn


class DataParallel:
    """This process's place in a data-parallel group (``mx.distributed``).

    The scheme, one for every trainer:

    * every rank holds the whole model and takes its shard of each optimizer
      step: the step's micro-batches (``step_batches`` with ``world_size``)
      split into ``size`` equal contiguous runs, rank ``r`` taking run ``r``;
      so 2 ranks x batch 2 consume the 4 rows batch 4 would, in its order;
    * normalisers are global: example and token counts are ``all_sum``-med
      over the ranks, KTO's reference point and GRPO's advantages are taken
      over the whole step; each rank's objective is then its exact share of
      the global loss, and the shares add up to it;
    * the core differentiates ``size`` x the share (the rank's estimate of the
      global loss) and averages the gradients with ``nn.average_gradients``:
      the mean of the estimates' gradients is the global gradient.  For a
      power-of-two ``size`` the scaling and the averaging are exact in
      floating point, so 2 ranks take the very gradient that 2-step
      accumulation of the same rows takes;
    * the logged loss (the sum of the shares), the metrics and the counts are
      global, identical on every rank.

    With one process (``group`` None or of size 1) every method is the identity.
    """

    def __init__(self, group=None):
        self.group = group
        self.size = 1 if group is None else group.size()
        self.rank = 0 if group is None else group.rank()

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, items):
        """This rank's contiguous run of ``items`` (the identity for one process)."""
        if not self.active:
            return items
        if len(items) % self.size:
            raise ValueError(f"{len(items)} items cannot be split evenly over {self.size} ranks")
        n = len(items) // self.size
        return items[self.rank * n : (self.rank + 1) * n]

    def all_sum(self, x):
        return mx.distributed.all_sum(x, group=self.group) if self.active else x

    def all_gather(self, x):
        """Every rank's ``x`` concatenated along axis 0, in rank order."""
        return mx.distributed.all_gather(x, group=self.group) if self.active else x

    def count(self, n: int) -> int:
        """The global total of a per-rank count."""
        return int(self.all_sum(mx.array(n)).item()) if self.active else n

    def average_gradients(self, grads):
        return nn.average_gradients(grads, group=self.group) if self.active else grads
