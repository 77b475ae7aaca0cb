"""Weight-sharing codec: a codebook plus canonical-Huffman-coded indices (Deep Compression, Han et al. 2016).

Shared by the compiler (which encodes what the `weight_sharing` pass produced) and the camera runtime
(which decodes the artifact's weights file at load), so it imports numpy and the standard library only.

One coded tensor ("blob"), little-endian:

    magic b"EWS1" | dtype u8 | mode u8 | ndim u8 | k u16 | shape ndim×u64 | codebook k×dtype
    mode HUFFMAN:  code lengths k×u8 (0: unused) | block u32 | nbits u64 | offsets (blocks-1)×u32 | payload
    mode CONSTANT: index u8 (every element is codebook[index]; also used for empty tensors)
    mode SPARSE:   zero u8 | gap code lengths 256×u8 | gaps u64 | gap payload | value code lengths k×u8 |
                   value payload (each payload: block u32 | nbits u64 | offsets | bits, as above)

SPARSE is Deep Compression's relative indexing for a pruned tensor whose codebook holds 0.0 (index
`zero`): only the other elements are stored, each as the count of zeros before it (a gap symbol
0..254; 255 stands for 255 zeros and no element) and its codebook index, both streams Huffman-coded.
Dense coding spends at least one bit per element, so it cannot pass 32× on fp32 weights; at 90%+
sparsity this can. `encode` writes whichever of HUFFMAN and SPARSE is smaller.

The payload is the indices' canonical Huffman codes, most significant bit first. It is cut into blocks
of `block` symbols whose starting bit offsets are stored, so that decoding runs over all blocks at once
(numpy lanes) instead of one symbol at a time in Python. The encoder picks the block size that keeps
the offsets under ~1% of the payload.

Many blobs travel in one bundle file (the artifact's `weights.ecw`):

    magic b"ECWB" | version u8 | count u32 | count × (name length u16 | name utf-8 | blob length u64 | blob)
"""

from __future__ import annotations

import heapq
import math
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

CODEC = "kmeans-huffman/1"  # what the manifest and WeightCoding.codec call this format
# An artifact with SPARSE blobs says so in its manifest: a camera whose runtime predates that mode
# then refuses the artifact by its codec name (with what it decodes), not by a blob's mode byte.
SPARSE_CODEC = "kmeans-huffman/2"
CODECS = (CODEC, SPARSE_CODEC)  # what this runtime decodes
BUNDLE_VERSION = 1
MAX_CODE_LENGTH = 16  # longest Huffman code: bounds the decode table at 2**16 entries
MAX_SYMBOLS = 256  # indices are one byte: codebooks of up to 2**8 entries
MAX_ELEMENTS = 1 << 31  # refuse headers claiming more (a corrupt shape must not allocate terabytes)
HUFFMAN, CONSTANT, SPARSE = 0, 1, 2
_FILLER = 255  # a gap symbol meaning "255 zeros, no element"

_MAGIC = b"EWS1"
_BUNDLE_MAGIC = b"ECWB"
_HEADER = struct.Struct("<4sBBBH")
_BLOCKING = struct.Struct("<IQ")
_DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype("<f2"), 2: np.dtype("<f4"), 3: np.dtype("<f8")}
_DTYPE_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_OFFSET_BITS = 32
_MIN_BLOCK, _MAX_BLOCK = 256, 4096


class WeightCodecError(ValueError):
    """A tensor cannot be encoded, or bytes are not a valid coded tensor/bundle (says which check failed)."""


# --- Huffman code construction -------------------------------------------------------------------


def huffman_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code length per symbol (0 for symbols that never occur), none longer than `max_length`.

    When the optimal tree is too deep, the counts are flattened (c → 1 + c // 2, as bzip2 does) and the
    tree rebuilt: a rare, slightly suboptimal case that keeps the decode table small.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    used = np.flatnonzero(counts > 0)
    if len(used) < 2:
        raise WeightCodecError(f"a Huffman code needs at least 2 used symbols, got {len(used)}")
    if max_length < math.ceil(math.log2(len(used))):
        raise WeightCodecError(f"{len(used)} symbols cannot have codes of at most {max_length} bits")
    weights = counts[used]
    while True:
        depths = _tree_depths(weights)
        if depths.max() <= max_length:
            lengths[used] = depths
            return lengths
        weights = 1 + weights // 2


def _tree_depths(weights: np.ndarray) -> np.ndarray:
    """Depth of each leaf in a Huffman tree over `weights` (deterministic: ties by insertion order)."""
    depths = np.zeros(len(weights), dtype=np.int64)
    heap = [(int(w), i, [i]) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    order = len(heap)
    while len(heap) > 1:
        w1, _, left = heapq.heappop(heap)
        w2, _, right = heapq.heappop(heap)
        members = left + right
        depths[members] += 1  # every leaf below the new node is one level deeper
        heapq.heappush(heap, (w1 + w2, order, members))
        order += 1
    return depths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes: symbols sorted by (length, symbol) get consecutive code values."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        codes[symbol] = code
        previous = int(lengths[symbol])
        code += 1
    return codes


def _check_lengths(lengths: np.ndarray) -> None:
    """The lengths must describe a complete prefix code (as Huffman's do): every decode window is a code."""
    used = lengths[lengths > 0].astype(np.int64)
    if len(used) < 2:
        raise WeightCodecError(
            f"check 'code lengths' failed: {len(used)} used symbols, a Huffman code has ≥ 2"
        )
    if used.max() > MAX_CODE_LENGTH:
        raise WeightCodecError(
            f"check 'code lengths' failed: a code of {used.max()} bits, the limit is {MAX_CODE_LENGTH}"
        )
    if int(np.sum(1 << (MAX_CODE_LENGTH - used))) != 1 << MAX_CODE_LENGTH:
        raise WeightCodecError("check 'code lengths' failed: they do not form a complete prefix code")


# --- one tensor ----------------------------------------------------------------------------------


def encode(indices: np.ndarray, codebook: np.ndarray) -> bytes:
    """Code `codebook[indices]`: the indices (any shape, values < len(codebook)) with Huffman codes."""
    codebook = np.asarray(codebook)
    indices = np.asarray(indices)
    dtype_code = _DTYPE_CODES.get(codebook.dtype.newbyteorder("<"))
    if codebook.ndim != 1 or dtype_code is None:
        raise WeightCodecError(
            f"the codebook must be 1-D float16/32/64, got {codebook.ndim}-D {codebook.dtype}"
        )
    if not 1 <= len(codebook) <= MAX_SYMBOLS:
        raise WeightCodecError(f"the codebook has {len(codebook)} entries; valid: 1..{MAX_SYMBOLS}")
    if not np.issubdtype(indices.dtype, np.integer):
        raise WeightCodecError(f"indices must be integers, got {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= len(codebook)):
        raise WeightCodecError(
            f"indices must lie in [0, {len(codebook)}), got [{indices.min()}, {indices.max()}]"
        )
    if indices.size > MAX_ELEMENTS:
        raise WeightCodecError(f"{indices.size} elements; this codec stores at most {MAX_ELEMENTS}")
    symbols = indices.reshape(-1).astype(np.uint8)
    counts = np.bincount(symbols, minlength=len(codebook))
    mode = HUFFMAN if np.count_nonzero(counts) >= 2 else CONSTANT
    header = _HEADER.pack(_MAGIC, dtype_code, mode, indices.ndim, len(codebook))
    header += struct.pack(f"<{indices.ndim}Q", *indices.shape)
    header += codebook.astype(codebook.dtype.newbyteorder("<")).tobytes()
    if mode == CONSTANT:
        return header + struct.pack("<B", int(symbols[0]) if symbols.size else 0)
    lengths = huffman_lengths(counts)
    dense = header + lengths.tobytes() + _encode_payload(symbols, lengths)
    zeros = np.flatnonzero(codebook == 0)
    if len(zeros) == 0:
        return dense
    sparse = _encode_sparse(symbols, int(zeros[0]), len(codebook))
    if len(sparse) >= len(dense) - 1:
        return dense
    return header[:5] + bytes([SPARSE]) + header[6:] + sparse


def _encode_sparse(symbols: np.ndarray, zero: int, k: int) -> bytes:
    """The SPARSE body after the codebook: gaps before each non-zero element, then their indices."""
    positions = np.flatnonzero(symbols != zero)
    gaps = np.diff(positions, prepend=-1) - 1
    fillers = gaps // _FILLER
    # Every gap becomes `fillers` filler symbols followed by its remainder.
    starts = np.cumsum(fillers + 1) - 1
    gap_symbols = np.full(int(starts[-1]) + 1 if len(starts) else 0, _FILLER, dtype=np.uint8)
    gap_symbols[starts] = (gaps % _FILLER).astype(np.uint8)
    values = symbols[positions]
    parts = [struct.pack("<B", zero)]
    for stream, alphabet in ((gap_symbols, 256), (values, k)):
        lengths = huffman_lengths(_two_symbols(np.bincount(stream, minlength=alphabet)))
        if stream is gap_symbols:
            parts += [lengths.tobytes(), struct.pack("<Q", len(stream))]
        else:
            parts += [lengths.tobytes()]
        parts.append(_encode_payload(stream, lengths))
    return b"".join(parts)


def _two_symbols(counts: np.ndarray) -> np.ndarray:
    """A Huffman code needs two symbols: a stream of one symbol gets an unused partner (1 bit each)."""
    if np.count_nonzero(counts) >= 2:
        return counts
    counts = counts.copy()
    counts[1 if counts[0] else 0] = 1
    return counts


def _encode_payload(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """Blocking header, block offsets and the packed code bits of `symbols`."""
    codes = canonical_codes(lengths)
    sizes = lengths.astype(np.int64)[symbols]
    values = codes[symbols]
    ends = np.cumsum(sizes)
    starts = ends - sizes
    nbits = int(ends[-1])
    if nbits >= 1 << _OFFSET_BITS:
        raise WeightCodecError(f"{nbits} payload bits; a coded tensor holds less than 2**32")
    bits = np.zeros(nbits, dtype=np.uint8)
    for bit in range(int(sizes.max())):  # bit `bit` of every code at once, most significant first
        has = sizes > bit
        bits[starts[has] + bit] = (values[has] >> (sizes[has] - 1 - bit)) & 1
    block = _block_size(len(symbols), nbits)
    offsets = starts[block::block].astype("<u4")
    return _BLOCKING.pack(block, nbits) + offsets.tobytes() + np.packbits(bits).tobytes()


def _block_size(count: int, nbits: int) -> int:
    """Symbols per block: the smallest power of two whose offsets cost ≤ ~1% of the payload."""
    needed = math.ceil(_OFFSET_BITS * 100 * count / nbits)
    block = 1 << max(needed - 1, 1).bit_length()
    return min(_MAX_BLOCK, max(_MIN_BLOCK, block))


def encode_values(values: np.ndarray) -> bytes:
    """Lossless coding of a float array with at most 256 distinct values (bit patterns, so -0.0 and NaN
    payloads survive): the codebook is its sorted distinct values."""
    values = np.asarray(values)
    if values.dtype.newbyteorder("<") not in _DTYPE_CODES:
        raise WeightCodecError(f"values must be float16/32/64, got {values.dtype}")
    bits_view = np.ascontiguousarray(values).reshape(-1).view(f"u{values.itemsize}")
    patterns, inverse = np.unique(bits_view, return_inverse=True)
    if len(patterns) > MAX_SYMBOLS:
        raise WeightCodecError(f"{len(patterns)} distinct values; this codec holds at most {MAX_SYMBOLS}")
    codebook = patterns.view(values.dtype) if len(patterns) else np.zeros(1, values.dtype)
    return encode(inverse.reshape(values.shape), codebook)


def codec_of(blobs: Iterable[bytes]) -> str:
    """The codec name an artifact holding `blobs` needs: SPARSE_CODEC when any blob is SPARSE."""
    return SPARSE_CODEC if any(len(b) > 5 and b[5] == SPARSE for b in blobs) else CODEC


def decode(blob: bytes) -> np.ndarray:
    """The array a blob codes; WeightCodecError naming the failed check for anything malformed."""
    reader = _Reader(blob)
    magic, dtype_code, mode, ndim, k = reader.unpack(_HEADER)
    if magic != _MAGIC:
        raise WeightCodecError(f"check 'magic' failed: {magic!r}, expected {_MAGIC!r}")
    dtype = _DTYPES.get(dtype_code)
    if dtype is None:
        raise WeightCodecError(f"check 'dtype' failed: code {dtype_code}, valid: {sorted(_DTYPES)}")
    if not 1 <= k <= MAX_SYMBOLS:
        raise WeightCodecError(f"check 'codebook size' failed: {k}, valid: 1..{MAX_SYMBOLS}")
    shape = reader.unpack(struct.Struct(f"<{ndim}Q"))
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise WeightCodecError(f"check 'shape' failed: {list(shape)} has more than {MAX_ELEMENTS} elements")
    codebook = np.frombuffer(reader.take(k * dtype.itemsize), dtype).astype(dtype.newbyteorder("="))
    if mode == CONSTANT:
        (index,) = reader.unpack(struct.Struct("<B"))
        reader.finish()
        if index >= k:
            raise WeightCodecError(f"check 'index' failed: {index} is not below the codebook size {k}")
        return np.full(shape, codebook[index], dtype=codebook.dtype)
    if mode == SPARSE:
        indices = _decode_sparse(reader, k, count)
        reader.finish()
        return codebook[indices].reshape(shape)
    if mode != HUFFMAN:
        raise WeightCodecError(
            f"check 'mode' failed: {mode}, valid: {HUFFMAN} (Huffman), {CONSTANT} (constant), "
            f"{SPARSE} (sparse)"
        )
    lengths = np.frombuffer(reader.take(k), np.uint8)
    _check_lengths(lengths)
    indices = _decode_payload(reader, lengths, count)
    reader.finish()
    return codebook[indices].reshape(shape)


def _decode_sparse(reader: _Reader, k: int, count: int) -> np.ndarray:
    (zero,) = reader.unpack(struct.Struct("<B"))
    if zero >= k:
        raise WeightCodecError(f"check 'zero index' failed: {zero} is not below the codebook size {k}")
    gap_lengths = np.frombuffer(reader.take(256), np.uint8)
    _check_lengths(gap_lengths)
    (gap_count,) = reader.unpack(struct.Struct("<Q"))
    if gap_count > count:
        raise WeightCodecError(f"check 'gaps' failed: {gap_count} gap symbols for {count} elements")
    gaps = _decode_payload(reader, gap_lengths, gap_count).astype(np.int64)
    stored = gaps != _FILLER
    ends = np.cumsum(np.where(stored, gaps + 1, _FILLER))
    positions = ends[stored] - 1
    if len(positions) == 0 or positions[-1] >= count:
        raise WeightCodecError(
            f"check 'gaps' failed: they place {len(positions)} elements, the last past {count}"
        )
    value_lengths = np.frombuffer(reader.take(k), np.uint8)
    _check_lengths(value_lengths)
    values = _decode_payload(reader, value_lengths, len(positions))
    indices = np.full(count, zero, dtype=np.uint8)
    indices[positions] = values
    return indices


def _decode_payload(reader: _Reader, lengths: np.ndarray, count: int) -> np.ndarray:
    block, nbits = reader.unpack(_BLOCKING)
    if block < 1 or not count <= nbits <= 8 * reader.remaining:  # every code is at least one bit
        raise WeightCodecError(
            f"check 'payload size' failed: {count} symbols in {nbits} bits (block {block}), "
            f"{reader.remaining} bytes left"
        )
    blocks = -(-count // block)
    offsets = np.zeros(blocks, dtype=np.int64)
    offsets[1:] = np.frombuffer(reader.take(4 * (blocks - 1)), "<u4")
    payload = np.frombuffer(reader.take(-(-nbits // 8)), np.uint8)
    if np.any(np.diff(offsets) <= 0) or offsets[-1] >= nbits:
        raise WeightCodecError("check 'block offsets' failed: they must increase and lie inside the payload")
    return _decode_blocks(payload, lengths, offsets, count, block, nbits)


def _decode_blocks(
    payload: np.ndarray, lengths: np.ndarray, offsets: np.ndarray, count: int, block: int, nbits: int
) -> np.ndarray:
    """Decode every block in lockstep: step j decodes the j-th symbol of all blocks with one table look-up."""
    width = int(lengths.max())
    table = _decode_table(lengths, width)
    # Zero padding so the last block may run past its end (its extra symbols are dropped) without
    # reading outside the array; then the 24-bit big-endian word starting at every byte, which holds
    # any code (≤ 16 bits) together with the ≤ 7 bits before it in its first byte.
    steps = min(block, count)
    padded = np.concatenate([payload, np.zeros(steps * width // 8 + 4, np.uint8)]).astype(np.uint32)
    words = (padded[:-2] << 16) | (padded[1:-1] << 8) | padded[2:]
    position = offsets.copy()
    out = np.empty((steps, len(offsets)), dtype=np.uint8)
    last_steps = count - (len(offsets) - 1) * block
    last_end = -1
    for step in range(len(out)):
        window = (words[position >> 3] >> (24 - width - (position & 7))) & ((1 << width) - 1)
        entry = table[window]
        out[step] = entry & 0xFF
        position += entry >> 8
        if step + 1 == last_steps:
            last_end = int(position[-1])
    # Each block must end exactly where the next begins and the last exactly at the payload's end:
    # this catches most corruption of the payload bits.
    if np.any(position[:-1] != offsets[1:]) or last_end != nbits:
        raise WeightCodecError("check 'block ends' failed: the coded bits do not decode to whole blocks")
    return out.T.reshape(-1)[:count]


def _decode_table(lengths: np.ndarray, width: int) -> np.ndarray:
    """For every `width`-bit window: its first code's symbol (low byte) and length (high byte)."""
    codes = canonical_codes(lengths)
    table = np.zeros(1 << width, dtype=np.int64)
    for symbol in np.flatnonzero(lengths):
        size = int(lengths[symbol])
        start = int(codes[symbol]) << (width - size)
        table[start : start + (1 << (width - size))] = symbol | (size << 8)
    return table


class _Reader:
    """A cursor over bytes whose every read checks that the bytes are there."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(bytes(data))
        self.offset = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.offset

    def take(self, size: int) -> bytes:
        if size < 0 or size > self.remaining:
            raise WeightCodecError(
                f"check 'length' failed: need {size} bytes at offset {self.offset}, {self.remaining} left"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return bytes(chunk)

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        return layout.unpack(self.take(layout.size))

    def finish(self) -> None:
        if self.remaining:
            raise WeightCodecError(f"check 'length' failed: {self.remaining} unexpected trailing bytes")


# --- the bundle file -----------------------------------------------------------------------------


def write_bundle(path: Path, blobs: Mapping[str, bytes]) -> None:
    """Write named blobs, in the mapping's order, into one file."""
    parts = [_BUNDLE_MAGIC, struct.pack("<BI", BUNDLE_VERSION, len(blobs))]
    for name, blob in blobs.items():
        encoded = name.encode()
        parts += [struct.pack("<H", len(encoded)), encoded, struct.pack("<Q", len(blob)), blob]
    Path(path).write_bytes(b"".join(parts))


def read_bundle(path: Path) -> dict[str, bytes]:
    """The named blobs of a bundle file, in file order (not decoded)."""
    reader = _Reader(Path(path).read_bytes())
    magic = reader.take(4)
    if magic != _BUNDLE_MAGIC:
        raise WeightCodecError(f"check 'magic' failed: {path} starts with {magic!r}, not {_BUNDLE_MAGIC!r}")
    version, count = reader.unpack(struct.Struct("<BI"))
    if version != BUNDLE_VERSION:
        raise WeightCodecError(
            f"check 'version' failed: {path} is version {version}, expected {BUNDLE_VERSION}"
        )
    blobs: dict[str, bytes] = {}
    for _ in range(count):
        (size,) = reader.unpack(struct.Struct("<H"))
        try:
            name = reader.take(size).decode()
        except UnicodeDecodeError as exc:
            raise WeightCodecError(f"check 'name' failed: {path} holds a name that is not UTF-8") from exc
        if name in blobs:
            raise WeightCodecError(f"check 'name' failed: {path} holds {name!r} twice")
        (size,) = reader.unpack(struct.Struct("<Q"))
        blobs[name] = reader.take(size)
    reader.finish()
    return blobs
