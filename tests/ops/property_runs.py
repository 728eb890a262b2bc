"""Where and how the fused-path property tests run: on the GPU where there
is one, under the interpreter otherwise, with derandomized hypothesis
examples so CI sees the same ones on every run."""

import torch
from hypothesis import HealthCheck

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
