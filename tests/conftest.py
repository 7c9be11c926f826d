"""Test-wide settings: one torch thread per test process.

The suite runs with ``pytest -n 2``; two workers with two intra-op threads each oversubscribe a
2-core machine, and tiny models then run several times slower.
"""

import torch

torch.set_num_threads(1)
