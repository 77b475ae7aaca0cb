"""edgecam/weight_codec.py: canonical Huffman coding of codebook indices, exact round trips, refusals.

Property-style: seeded random arrays of many shapes, codebook sizes and skews (no extra dependency).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgecam import weight_codec as wc


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices and a codebook: 1..256 entries, uniform or heavily skewed use, any shape incl. empty."""
    k = int(rng.choice([1, 2, 3, 16, 32, 200, 256]))
    ndim = int(rng.integers(0, 5))
    shape = tuple(int(d) for d in rng.integers(0, 9, size=ndim))
    if rng.random() < 0.5:
        weights = np.ones(k)
    else:  # geometric skew: the first symbol dominates, the last are rare or absent
        weights = float(rng.uniform(1.5, 40)) ** -np.arange(k, dtype=np.float64)
    indices = rng.choice(k, size=shape, p=weights / weights.sum())
    dtype = rng.choice([np.float16, np.float32, np.float64])
    codebook = np.sort(rng.standard_normal(k)).astype(dtype)
    return indices, codebook


def test_round_trip_is_exact_on_many_random_arrays() -> None:
    rng = np.random.default_rng(2024)
    for case in range(300):
        indices, codebook = _random_case(rng)
        decoded = wc.decode(wc.encode(indices, codebook))
        assert decoded.dtype == codebook.dtype and decoded.shape == indices.shape, case
        np.testing.assert_array_equal(decoded, codebook[indices], err_msg=f"case {case}")


def test_single_symbol_empty_and_scalar_tensors() -> None:
    codebook = np.array([-1.5, 0.0, 2.0], np.float32)
    constant = wc.encode(np.full((64, 3, 3, 3), 1), codebook)
    assert len(constant) < 80  # no per-element bits when only one symbol occurs
    np.testing.assert_array_equal(wc.decode(constant), np.zeros((64, 3, 3, 3), np.float32))
    assert wc.decode(wc.encode(np.zeros((0, 5), int), codebook)).shape == (0, 5)
    scalar = wc.decode(wc.encode(np.array(2), codebook))
    assert scalar.shape == () and scalar == np.float32(2.0)


def test_encode_values_is_lossless_bit_for_bit() -> None:
    values = np.array([[0.0, -0.0, np.nan], [1e-30, np.inf, 0.0]], np.float32)
    decoded = wc.decode(wc.encode_values(values))
    assert decoded.tobytes() == values.tobytes()  # -0.0 and the NaN payload survive
    with pytest.raises(wc.WeightCodecError, match="300 distinct values"):
        wc.encode_values(np.arange(300, dtype=np.float32))


def test_skewed_indices_cost_about_their_entropy() -> None:
    """A pruned layer: 90% zeros and 15 other centroids; Huffman gives the zero index a 1-bit code."""
    rng = np.random.default_rng(0)
    p = np.array([0.9] + [0.1 / 15] * 15)
    indices = rng.choice(16, size=200_000, p=p)
    blob = wc.encode(indices, np.linspace(-1, 1, 16).astype(np.float32))
    bits_per_weight = 8 * len(blob) / indices.size
    entropy = float(-(p * np.log2(p)).sum())  # 0.86 bits; Huffman pays ≥ 1 bit for the zero index
    assert entropy < bits_per_weight < 1.0 + 0.1 * 4 + 0.05, bits_per_weight


def test_huffman_lengths_are_optimal_and_limited() -> None:
    assert wc.huffman_lengths(np.array([5, 0, 5])).tolist() == [1, 0, 1]
    assert wc.huffman_lengths(np.array([8, 4, 2, 1, 1])).tolist() == [1, 2, 3, 4, 4]
    # Fibonacci counts make the deepest possible tree (40 levels); the limit flattens it to 16 bits.
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    lengths = wc.huffman_lengths(np.array(fib, np.int64))
    assert lengths.max() == wc.MAX_CODE_LENGTH
    assert sum(2.0 ** -int(n) for n in lengths) == 1.0  # still a complete prefix code
    codes = wc.canonical_codes(lengths)
    words = {format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True)}
    assert not any(a != b and b.startswith(a) for a in words for b in words)  # prefix-free


def test_decoding_millions_of_symbols_takes_well_under_a_second() -> None:
    rng = np.random.default_rng(1)
    indices = rng.choice(32, size=5_000_000, p=np.array([0.85] + [0.15 / 31] * 31)).astype(np.uint8)
    codebook = np.linspace(-0.5, 0.5, 32).astype(np.float32)
    blob = wc.encode(indices, codebook)
    started = time.perf_counter()
    decoded = wc.decode(blob)
    elapsed = time.perf_counter() - started
    np.testing.assert_array_equal(decoded, codebook[indices])
    assert elapsed < 1.0, f"decoding 5M symbols took {elapsed:.2f} s"


def test_malformed_blobs_are_refused_naming_the_check() -> None:
    rng = np.random.default_rng(3)
    blob = wc.encode(rng.choice(8, size=5000), np.arange(8, dtype=np.float32))
    for cut in (0, 3, 12, len(blob) // 2, len(blob) - 1):
        with pytest.raises(wc.WeightCodecError, match="check '"):
            wc.decode(blob[:cut])
    with pytest.raises(wc.WeightCodecError, match="check 'magic'"):
        wc.decode(b"XXXX" + blob[4:])
    with pytest.raises(wc.WeightCodecError, match="check 'length'"):
        wc.decode(blob + b"\0")
    with pytest.raises(wc.WeightCodecError, match="check 'dtype'"):
        wc.decode(blob[:4] + b"\x09" + blob[5:])


def test_random_corruption_never_escapes_as_another_error() -> None:
    """Flipped bytes anywhere: a WeightCodecError, or an array of some shape; never a crash or hang."""
    rng = np.random.default_rng(4)
    indices = rng.choice(16, size=(40, 30), p=np.r_[0.7, np.full(15, 0.02)])
    blob = bytearray(wc.encode(indices, np.linspace(-1, 1, 16).astype(np.float32)))
    refused = 0
    for _ in range(400):
        bad = bytearray(blob)
        for position in rng.integers(0, len(bad), size=int(rng.integers(1, 4))):
            bad[position] ^= int(rng.integers(1, 256))
        try:
            wc.decode(bytes(bad))
        except wc.WeightCodecError:
            refused += 1
    assert refused > 300  # most payload corruption is caught by the block-end check, not just headers


def test_bundle_round_trip_and_refusals(tmp_path: Path) -> None:
    blobs = {"onnx::Conv_54": wc.encode_values(np.ones(3, np.float32)), "fc.w": b"", "ü": b"\x01\x02"}
    path = tmp_path / "weights.ecw"
    wc.write_bundle(path, blobs)
    assert wc.read_bundle(path) == blobs and list(wc.read_bundle(path)) == list(blobs)
    data = path.read_bytes()
    for bad, check in [(data[:-1], "length"), (b"ECWX" + data[4:], "magic"), (data + b"\0", "length")]:
        path.write_bytes(bad)
        with pytest.raises(wc.WeightCodecError, match=f"check '{check}'"):
            wc.read_bundle(path)


def test_the_codec_imports_numpy_only() -> None:
    code = (
        "import sys, edgecam.weight_codec\n"
        "print(sorted(m for m in ('onnx', 'sklearn', 'tvm', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _pruned(sparsity: float, seed: int, shape: tuple[int, ...] = (300, 784)) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a pruned layer: 0.0 at index 0 of a 32-entry codebook, the rest uniform."""
    rng = np.random.default_rng(seed)
    indices = rng.integers(1, 32, shape)
    indices[rng.random(shape) < sparsity] = 0
    return indices, np.r_[0.0, np.linspace(-1, 1, 31)].astype(np.float32)


def test_sparse_mode_stores_a_pruned_tensor_past_the_dense_32x_floor() -> None:
    indices, codebook = _pruned(0.95, seed=5)
    blob = wc.encode(indices, codebook)
    assert blob[5] == wc.SPARSE
    np.testing.assert_array_equal(wc.decode(blob), codebook[indices])
    # Dense Huffman spends ≥ 1 bit per element (32× on fp32); relative indexing does not.
    assert indices.size * 4 / len(blob) > 45


def test_sparse_mode_round_trips_long_gaps_edges_and_a_dense_choice() -> None:
    codebook = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    for positions in ([0], [99_999], [5, 70_000, 99_999], [0, 1, 2, 255, 511, 766, 767]):
        indices = np.zeros(100_000, np.int64)
        indices[positions] = 3
        blob = wc.encode(indices, codebook)
        assert blob[5] == wc.SPARSE
        np.testing.assert_array_equal(wc.decode(blob), codebook[indices])
    indices, codebook = _pruned(0.2, seed=6, shape=(64, 64))
    assert wc.encode(indices, codebook)[5] == wc.HUFFMAN  # sparse would be larger: dense is kept


def test_corrupt_sparse_blobs_are_refused_naming_the_check() -> None:
    indices, codebook = _pruned(0.95, seed=7, shape=(50, 60))
    blob = bytearray(wc.encode(indices, codebook))
    header = 9 + 2 * 8 + 32 * 4  # magic..k, the two dims, the codebook
    with pytest.raises(wc.WeightCodecError, match="check 'zero index'"):
        wc.decode(bytes(blob[:header]) + b"\xff" + bytes(blob[header + 1 :]))
    rng = np.random.default_rng(8)
    refused = 0
    for _ in range(300):
        bad = bytearray(blob)
        position = int(rng.integers(header, len(bad)))
        bad[position] ^= int(rng.integers(1, 256))
        try:
            wc.decode(bytes(bad))
        except wc.WeightCodecError:
            refused += 1
    assert refused > 200


def test_an_artifact_with_sparse_blobs_is_named_by_the_codec_that_added_them() -> None:
    """A camera whose runtime predates SPARSE refuses such an artifact by its codec name."""
    sparse = wc.encode(*_pruned(0.95, seed=5))
    dense = wc.encode(*_pruned(0.2, seed=6, shape=(64, 64)))
    assert wc.codec_of([dense]) == wc.CODEC and wc.codec_of([]) == wc.CODEC
    assert wc.codec_of([dense, sparse]) == wc.SPARSE_CODEC
    assert set(wc.CODECS) == {wc.CODEC, wc.SPARSE_CODEC}
