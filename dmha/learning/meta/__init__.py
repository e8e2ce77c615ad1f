"""The causal meta-learner: plans each update, repairs failed ones, learns from outcomes.

- :mod:`~dmha.learning.meta.state` — what it sees of an update (one feature vector);
- :mod:`~dmha.learning.meta.learner` — the MLP and the bounded, smoothed plan changes;
- :mod:`~dmha.learning.meta.utility` — per-module utility gates (goodness, IB-JSD);
- :mod:`~dmha.learning.meta.repair` — repair mode after a divergence or a rejection;
- :mod:`~dmha.learning.meta.reptile` — the meta-initialisation of the edit factors;
- :mod:`~dmha.learning.meta.training` — the reward and the learner's training;
- :mod:`~dmha.learning.meta.store` — the meta registry and insights on disk;
- :mod:`~dmha.learning.meta.controller` — what the training worker calls.
"""
