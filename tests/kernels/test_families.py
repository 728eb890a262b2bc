"""Which devices the kernel tables serve: by compute capability and by the
shared memory a block can opt into, never by capability alone."""

from __future__ import annotations

import pytest

from tfllmer_fast.kernels import aot, config


@pytest.mark.parametrize("capability,shared,expected", [
    ((9, 0), 232_448, "sm_90"),      # H100 / H200
    ((8, 0), 166_912, "sm_80"),      # A100
    ((8, 6), 101_376, "sm_80"),      # RTX 30xx, A40
    ((8, 9), 101_376, "sm_80"),      # L4, L40, RTX 40xx
    ((8, 7), 166_912, "sm_80"),      # Orin
    ((12, 0), 101_376, None),        # consumer Blackwell: not compiled for by the gate
    ((10, 0), 232_448, None),        # B200: tcgen05, not compiled for by the gate
    ((7, 5), 65_536, None),          # T4: no bf16 tensor cores
    ((7, 0), 98_304, None),          # V100
    ((9, 0), 101_376, None),         # an sm_90 part with less shared memory than the tables assume
])
def test_family_by_capability_and_shared_memory(capability, shared, expected):
    assert config.family(capability, shared) == expected


def test_every_family_is_a_compile_target_with_its_shared_memory():
    for name, needs in config.FAMILIES.items():
        assert aot.TARGETS[name] == (int(name[3:]), needs["shared_memory"])


def test_an_unserved_device_is_not_served_and_says_why(monkeypatch):
    import torch

    from tfllmer_fast.kernels import normalized_lse_fwd

    monkeypatch.setattr(config, "arch", lambda device: None)
    monkeypatch.setattr(config, "interpreting", lambda: False)
    cuda = torch.device("cuda", 0)
    assert not config.served(normalized_lse_fwd.TABLE, 64, cuda, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(RuntimeError, match="no kernel table serves Tesla T4"):
        config.pick(normalized_lse_fwd.TABLE, 64, cuda, torch.bfloat16)
