"""Sign-random-projection (SimHash) codes for LSH attention: Gaussian hyperplanes or fast Hadamard rotations.

A τ-bit code records on which side of τ hyperplanes through the origin a vector lies. Two unit vectors at
angle θ fall on the same side of one uniformly random hyperplane with probability 1 − θ/π, so with
independent hyperplanes they share the whole code with probability (1 − θ/π)^τ: the weight YOSO-E uses.

Three ways to draw the m·τ hyperplanes of a batch×head, chosen by `method`:
- "simhash": independent Gaussian directions.
- "hadamard": rows of structured random rotations H·D₃·H·D₂·H·D₁ (D_i random ±1 diagonals, H the
  Walsh–Hadamard matrix, applied by the fast transform), as in the cross-polytope LSH literature (Andoni
  et al., 2015). Vectors are zero-padded to D = the next power of two ≥ head_dim (at least 32: narrower
  structured rotations are measurably far from uniform ones). Bit t of hash h is a row of rotation
  (h·τ + t) mod R, with R ≥ τ rotations, so the τ bits of one hash come from τ independent rotations: rows of
  one rotation are orthogonal, and a hash built from them would collide less often than (1 − θ/π)^τ
  (measured: −5% at head_dim 64, τ = 8; far more for small head_dim). This matches the ideal rate; it is our
  construction, not the YOSO paper's.
- "fast_hadamard": the YOSO paper's fast hash (its LRA configurations' `use_fast_hash`), built as the
  original code builds it: the same H·D₃·H·D₂·H·D₁ rotations on the vector zero-padded to D (the original
  needs a power-of-two head_dim and pads below 32), but each rotation serves ⌊D/τ⌋ whole hashes: hash h takes
  the τ consecutive coordinates j·τ … j·τ + τ − 1 of rotation h // ⌊D/τ⌋, j = h mod ⌊D/τ⌋ (coordinates
  beyond ⌊D/τ⌋·τ are unused), and R = ⌈m / ⌊D/τ⌋⌉ rotations are drawn. Because a hash's τ directions are
  orthogonal, it *under*-collides: at D = 32, τ = 11 about 0.99 / 0.97 / 0.93 / 0.86 of (1 − θ/π)^τ at
  10° / 20° / 30° / 45° (tested). Needs τ ≤ D.

The hyperplanes of a call are materialised as one (head_dim, m·τ) matrix per batch×head and applied by a
matrix product: for the two Hadamard methods the rotations are multiplied out once per call (three R × D × D
products with H, which the fast transform builds), because on a CPU one GEMM over the n vectors beats running
the O(D log D) butterflies on each of them by an order of magnitude (measured 8 vs 240 ms at n = 4096,
head_dim 64, m·τ = 384, one core); the codes are the same (tested). So on CPU the methods cost the same; they
differ in the distribution of the hyperplanes.

Codes are int32 (m, n) in [0, 2^τ): bit t of hash h is 1 when the projection on direction h·τ + t is positive.
"""
from __future__ import annotations

import math
import threading

import torch

__all__ = ["HASHING_METHODS", "HashFamily", "fast_hadamard_planes", "fwht", "hadamard_planes", "pack_bits",
           "rotation_width"]

HASHING_METHODS = ("simhash", "hadamard", "fast_hadamard")
# Smallest rotation width D (see the module docstring).
_MIN_WIDTH = 32
# Per-thread scratch for the (m·τ, n) projections (6 MB at n = 4096): reused, because a fresh block that size
# costs page faults each time (glibc hands large freed blocks back to the system).
_scratch = threading.local()


def _projection_buffer(rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    buf = getattr(_scratch, "projections", None)
    if buf is None or buf.dtype != dtype or buf.numel() < rows * cols:
        buf = _scratch.projections = torch.empty(rows * cols, dtype=dtype)
    return buf[: rows * cols].view(rows, cols)


def pack_bits(projections: torch.Tensor, hash_code_len: int) -> torch.Tensor:
    """(…, m·τ, n) projections → int32 (…, m, n) codes: bit t of hash h is [projection h·τ + t > 0]."""
    return _pack_signs(torch.sign(projections), hash_code_len)


def _pack_signs(signs: torch.Tensor, hash_code_len: int) -> torch.Tensor:
    """Codes from (…, m·τ, n) signs in {−1, 0, 1}: (Σ_t 2^t·sign_t + 2^τ − 1) / 2, by one product with the
    powers of two (exact in float32 for τ ≤ 24): on a CPU several times faster than a comparison, a cast and
    integer shifts. A projection of exactly 0 (a zero vector, i.e. padding, which gets its own code anyway)
    rounds down."""
    *lead, bits, n = signs.shape
    powers = torch.exp2(torch.arange(hash_code_len, device=signs.device, dtype=signs.dtype))
    codes = powers @ signs.reshape(*lead, bits // hash_code_len, hash_code_len, n)
    return codes.add_((1 << hash_code_len) - 1).mul_(0.5).to(torch.int32)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh–Hadamard transform over the last dimension (a power of two): x @ H in
    O(D log D) butterflies, H the Sylvester–Hadamard matrix (H_1 = [1], H_2k = [[H_k, H_k], [H_k, −H_k]])."""
    d = x.shape[-1]
    if d & (d - 1):
        raise ValueError(f"fwht needs a power-of-two last dimension, got {d}")
    lead = x.shape[:-1]
    h = 1
    while h < d:
        # pair element i with i + h inside each block of 2h: (a, b) → (a + b, a − b)
        a, b = x.reshape(*lead, d // (2 * h), 2, h).unbind(-2)
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, d)
        h *= 2
    return x


def rotation_width(head_dim: int) -> int:
    """D: the power of two ≥ head_dim (at least 32) that vectors are zero-padded to before the rotations."""
    return max(_MIN_WIDTH, 1 << max(0, (head_dim - 1).bit_length()))


def _rotations(signs: torch.Tensor) -> torch.Tensor:
    """signs (3, R, D) ±1 → (R, D, D) matrices: x ↦ x·D₁·H·D₂·H·D₃·H (the row-vector form of H·D₃·H·D₂·H·D₁·x,
    H being symmetric) per rotation; column c of matrix r is output coordinate c of rotation r. H is built by
    the fast transform; the three products with it are small batched GEMMs (R × D × D)."""
    width = signs.shape[-1]
    hadamard = fwht(torch.eye(width, dtype=signs.dtype, device=signs.device))
    y = torch.diag_embed(signs[0]) @ hadamard
    for s in signs[1:]:
        y = (y * s[:, None, :]) @ hadamard  # right-multiplying by D_i scales columns
    return y


def hadamard_planes(signs: torch.Tensor, head_dim: int, bits: int) -> torch.Tensor:
    """"hadamard": (head_dim, bits) hyperplanes from R rotations, bit f taken from direction f // R of rotation
    f % R (so consecutive bits, i.e. the τ bits of one hash, come from different rotations)."""
    _, rotations, width = signs.shape
    y = _rotations(signs)
    # y[r] is the D×D matrix of rotation r; column c of it is direction c. Flat bit f = c·R + r.
    return y[:, :head_dim, :].permute(1, 2, 0).reshape(head_dim, width * rotations)[:, :bits]


def fast_hadamard_planes(signs: torch.Tensor, head_dim: int, num_hash: int, hash_code_len: int) -> torch.Tensor:
    """"fast_hadamard": (head_dim, m·τ) hyperplanes, the YOSO paper's layout: with p = ⌊D/τ⌋ hashes per
    rotation, bit t of hash h is coordinate (h mod p)·τ + t of rotation h // p (needs R ≥ ⌈m/p⌉)."""
    width = signs.shape[-1]
    per_rotation = width // hash_code_len
    used = per_rotation * hash_code_len  # the first p·τ coordinates of each rotation; the rest are unused
    y = _rotations(signs)[:, :head_dim, :used]  # (R, head_dim, p·τ)
    # flat bit r·p·τ + j·τ + t = (r·p + j)·τ + t = h·τ + t for hash h = r·p + j
    return y.permute(1, 0, 2).reshape(head_dim, -1)[:, : num_hash * hash_code_len]


class HashFamily:
    """The random hash functions of one call: `num_hash` τ-bit codes for each of `groups` batch×heads.

    Drawn once (from `generator`) and applied to queries and keys alike, so that both land in the same
    buckets. `codes(x, group)` hashes the (n, head_dim) vectors of one group → int32 (num_hash, n).
    """

    def __init__(self, method: str, groups: int, head_dim: int, num_hash: int, hash_code_len: int,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        if method not in HASHING_METHODS:
            raise ValueError(f"hashing must be one of {', '.join(HASHING_METHODS)}; got {method!r}")
        self.method, self.num_hash, self.hash_code_len = method, num_hash, hash_code_len
        bits = num_hash * hash_code_len
        if method == "simhash":
            # Independent hyperplanes per batch×head, as in the reference; one draw serves all m hashes.
            planes = torch.randn(groups, head_dim, bits, generator=generator, dtype=dtype, device=device)
            self.planes_t = planes.transpose(1, 2).contiguous()  # (groups, m·τ, head_dim): Rᵀ
        else:
            width = rotation_width(head_dim)
            if method == "hadamard":
                # ≥ τ rotations: a hash's bits in distinct rotations
                rotations = max(hash_code_len, math.ceil(bits / width))
            else:
                if hash_code_len > width:
                    raise ValueError(f"hashing 'fast_hadamard' takes the {hash_code_len} bits of a hash from one "
                                     f"rotation of width {width} (head_dim {head_dim} padded to a power of two "
                                     f">= {_MIN_WIDTH}); hash_code_len must be <= {width}")
                rotations = math.ceil(num_hash / (width // hash_code_len))  # whole hashes per rotation
            signs = torch.randint(0, 2, (groups, 3, rotations, width), generator=generator, device=device)
            self.signs = (signs * 2 - 1).to(dtype)
        self.head_dim, self.bits = head_dim, bits
        self._built: dict[int, torch.Tensor] = {}  # Hadamard planes per group, built on first use

    def group_planes(self, group: int) -> torch.Tensor:
        """The (head_dim, m·τ) hyperplanes R of one batch×head (as a transposed view)."""
        return self._planes_t(group).t()

    def _planes_t(self, group: int) -> torch.Tensor:
        if self.method == "simhash":
            return self.planes_t[group]
        # Hadamard methods: built here, so that each worker thread builds its own groups' rotations
        if group not in self._built:  # each group is hashed by one worker (queries, then keys)
            if self.method == "hadamard":
                planes = hadamard_planes(self.signs[group], self.head_dim, self.bits)
            else:
                planes = fast_hadamard_planes(self.signs[group], self.head_dim, self.num_hash, self.hash_code_len)
            self._built[group] = planes.t().contiguous()
        return self._built[group]

    def codes_many(self, x: torch.Tensor, group: int) -> torch.Tensor:
        """int32 (P, num_hash, n) codes of the (P, n, head_dim) vectors of batch×heads group … group + P − 1,
        in one batched product (equal to P calls of `codes`)."""
        count = x.shape[0]
        if self.method == "simhash":
            planes_t = self.planes_t[group: group + count]
        else:
            planes_t = torch.stack([self._planes_t(g) for g in range(group, group + count)])
        with torch.no_grad():
            return _pack_signs(torch.bmm(planes_t, x.transpose(1, 2)).sign_(), self.hash_code_len)

    def codes(self, x: torch.Tensor, group: int) -> torch.Tensor:
        """int32 (num_hash, n) codes of the (n, head_dim) vectors `x` of batch×head `group`."""
        # (x @ R)ᵀ computed as Rᵀ @ xᵀ: laid out hash-major, as the packing wants, into a reused buffer
        projections = _projection_buffer(self.bits, x.shape[0], x.dtype)
        with torch.no_grad():  # codes are piecewise constant: nothing to differentiate
            torch.mm(self._planes_t(group), x.t(), out=projections)
            return _pack_signs(projections.sign_(), self.hash_code_len)
