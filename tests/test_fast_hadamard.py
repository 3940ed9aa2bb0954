"""`hashing="fast_hadamard"`: the YOSO paper's fast Hadamard hash (its LRA configurations' `use_fast_hash`).

The reference here is re-derived in numpy from the paper's description, independently of the library: each
hash function applies H·D₃·H·D₂·H·D₁ (H the Sylvester–Hadamard matrix, D_i random ±1 diagonals) to the
vector zero-padded to a power of two D, and takes τ consecutive coordinates of one such rotation as its τ
bits, ⌊D/τ⌋ hashes per rotation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bort.attention.hashing import HASHING_METHODS, HashFamily


def _sylvester(width: int) -> np.ndarray:
    """H_1 = [1], H_2k = [[H_k, H_k], [H_k, −H_k]], built by Kronecker products."""
    h = np.ones((1, 1))
    while h.shape[0] < width:
        h = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), h)
    return h


def _paper_rotations(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """x (P, d) and signs (3, R, D) → (R, P, D): H·D₃·H·D₂·H·D₁·x for each rotation, x zero-padded to D."""
    width = signs.shape[-1]
    h = _sylvester(width)
    y = np.zeros((x.shape[0], width))
    y[:, : x.shape[1]] = x
    y = np.broadcast_to(y, (signs.shape[1],) + y.shape)
    for diagonal in signs:  # D₁ first, then H; D₂, H; D₃, H
        y = (y * diagonal[:, None, :]) @ h.T
    return y


def _paper_codes(x: np.ndarray, signs: np.ndarray, num_hash: int, tau: int) -> np.ndarray:
    """(num_hash, P) codes: hash h reads coordinates j·τ … j·τ + τ − 1 of rotation h // ⌊D/τ⌋, j = h mod ⌊D/τ⌋;
    bit t is [coordinate j·τ + t > 0] and weighs 2^t."""
    y = _paper_rotations(x, signs)
    per_rotation = signs.shape[-1] // tau
    codes = np.zeros((num_hash, x.shape[0]), dtype=np.int64)
    for hash_index in range(num_hash):
        rotation, slot = divmod(hash_index, per_rotation)
        for t in range(tau):
            codes[hash_index] += (y[rotation, :, slot * tau + t] > 0).astype(np.int64) << t
    return codes


@pytest.mark.parametrize("head_dim,tau,num_hash", [(32, 11, 5), (64, 8, 20), (20, 6, 7), (48, 16, 3)])
def test_codes_equal_a_numpy_rederivation_of_the_papers_hash(head_dim, tau, num_hash):
    """Same random signs → the same codes, for power-of-two and padded head dims, several hashes per rotation
    and several rotations; `codes_many` agrees with `codes`."""
    groups = 2
    family = HashFamily("fast_hadamard", groups, head_dim, num_hash, tau, torch.Generator().manual_seed(3),
                        torch.float64)
    width = max(32, 1 << (head_dim - 1).bit_length())
    assert family.signs.shape == (groups, 3, math.ceil(num_hash / (width // tau)), width)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(groups, 40, head_dim, generator=gen, dtype=torch.float64)
    many = family.codes_many(x, 0)
    for g in range(groups):
        expected = _paper_codes(x[g].numpy(), family.signs[g].numpy(), num_hash, tau)
        np.testing.assert_array_equal(family.codes(x[g], g).numpy(), expected)
        np.testing.assert_array_equal(many[g].numpy(), expected)
    # The other structured option reads its bits from different rotations: different codes (the comparison
    # above can tell the two layouts apart).
    other = HashFamily("hadamard", groups, head_dim, num_hash, tau, torch.Generator().manual_seed(3),
                       torch.float64)
    assert not np.array_equal(other.codes(x[0], 0).numpy(),
                              _paper_codes(x[0].numpy(), other.signs[0].numpy(), num_hash, tau))


def _pairs_at_angle(theta: float, count: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((count, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    r = rng.standard_normal((count, dim))
    r -= (r * x).sum(1, keepdims=True) * x
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    return x, math.cos(theta) * x + math.sin(theta) * r


def test_collision_rate_is_the_original_constructions_and_below_the_ideal():
    """d = 32, τ = 11: P(code(x) = code(y)) at 10°/20°/30°/45° over 1000 hashes × 400 pairs (400k pair-hash
    draws) per angle, from the library and, with its own random signs and pairs, from the numpy
    construction: within 0.01 of each other, and, as the original, under (1 − θ/π)^τ (a hash's τ directions
    are orthogonal, so its bits are not independent)."""
    d, tau, num_hash, pairs = 32, 11, 1000, 400
    rng = np.random.default_rng(11)
    family = HashFamily("fast_hadamard", 1, d, num_hash, tau, torch.Generator().manual_seed(12))
    reference_signs = rng.choice([-1.0, 1.0], size=(3, math.ceil(num_hash / (32 // tau)), 32))
    ratios = []
    for degrees in (10, 20, 30, 45):
        theta = math.radians(degrees)
        x, y = _pairs_at_angle(theta, pairs, d, rng)
        ours = (family.codes(torch.from_numpy(x).float(), 0) == family.codes(torch.from_numpy(y).float(), 0))
        x, y = _pairs_at_angle(theta, pairs, d, rng)
        paper = _paper_codes(x, reference_signs, num_hash, tau) == _paper_codes(y, reference_signs, num_hash, tau)
        ours_rate, paper_rate = ours.double().mean().item(), paper.mean()
        ideal = (1 - theta / math.pi) ** tau
        assert abs(ours_rate - paper_rate) < 0.01, (degrees, ours_rate, paper_rate)
        ratios.append(ours_rate / ideal)
    # measured ≈ 0.99 / 0.97 / 0.94 / 0.84: below 1 everywhere, clearly so at the wider angles
    assert all(r < 1.0 for r in ratios), ratios
    assert ratios[2] < 0.97 and ratios[3] < 0.92, ratios
    assert ratios == sorted(ratios, reverse=True), ratios  # the deficit grows with the angle


def test_fast_hadamard_yoso_equals_its_collision_counts():
    """The sampled attention with hashing="fast_hadamard" is normalise(collision counts · V / m) for the hash
    family the same generator draws (padding excluded)."""
    from bort.attention.yoso import yoso

    b, h, n, d, tau, m = 1, 2, 30, 16, 5, 9
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(3))
    real = torch.ones(b, n, dtype=torch.bool)
    real[0, 23:] = False
    out = yoso(q, k, v, real, hash_code_len=tau, num_hash=m, generator=torch.Generator().manual_seed(9),
               hashing="fast_hadamard")
    family = HashFamily("fast_hadamard", b * h, d, m, tau, torch.Generator().manual_seed(9), torch.float64)
    r = real[0]
    for head in range(h):
        qc, kc = family.codes(q[0, head], head), family.codes(k[0, head], head)
        counts = (qc[:, :, None] == kc[:, None, :]).sum(0).double() * (r[:, None] & r[None, :]) / m
        expected = F.normalize(counts @ v[0, head].masked_fill(~r[:, None], 0), dim=-1)
        torch.testing.assert_close(out[0, head][r], expected[r], rtol=1e-10, atol=1e-12)
        assert torch.all(out[0, head][~r] == 0)


def test_unknown_hashing_lists_the_valid_ones():
    from bort.attention import get_attention
    from bort.attention.yoso import yoso
    from bort.config import BortConfig

    assert HASHING_METHODS == ("simhash", "hadamard", "fast_hadamard")
    message = "hashing must be one of simhash, hadamard, fast_hadamard; got 'minhash'"
    with pytest.raises(ValueError, match=message):
        HashFamily("minhash", 1, 8, 2, 3)
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match=message):
        yoso(q, q, q, hashing="minhash")
    bad = BortConfig.preset("bert-base", num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                            intermediate_size=32, attention="yoso", attention_params={"hashing": "minhash"})
    with pytest.raises(ValueError, match=message):
        get_attention("yoso")(bad, 0)


def test_fast_hadamard_refuses_a_code_longer_than_the_rotation():
    """All τ bits of a hash come from one rotation of width D: τ > D is refused, naming both."""
    with pytest.raises(ValueError, match=r"hash_code_len must be <= 32") as info:
        HashFamily("fast_hadamard", 1, 20, 4, 33)
    assert "head_dim 20" in str(info.value) and "fast_hadamard" in str(info.value)
    HashFamily("fast_hadamard", 1, 20, 4, 32).codes(torch.randn(3, 20), 0)  # τ = D: one hash per rotation


def test_fast_hadamard_is_exposed_through_attention_params():
    from bort.config import BortConfig
    from bort.model import BortModel

    config = BortConfig.preset("bert-base", num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                               intermediate_size=32, attention="yoso",
                               attention_params={"hashing": "fast_hadamard", "hash_code_len": 6, "num_hash": 4})
    model = BortModel(config)
    assert model.encoder.layer[0].attention.self.mechanism.hashing == "fast_hadamard"
    out = model(torch.randint(5, 100, (2, 11)), torch.ones(2, 11, dtype=torch.long))
    out.last_hidden_state.sum().backward()
    assert torch.isfinite(out.last_hidden_state).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
