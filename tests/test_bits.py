"""Packed bit masks: round trip, the exact byte layout every backend reads, popcount, bad input."""

import pytest
import torch

from dgm import bits

SHAPES = [(13,), (1, 1), (5, 3), (4, 9), (7, 16), (3, 17), (6, 2, 3, 3), (3, 5, 1, 1), (2, 4, 5, 5)]


def _random_mask(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < 0.4


def _pack_by_hand(mask: torch.Tensor) -> torch.Tensor:
    """Bit j of byte b in row r is column 8*b + j of the row-flattened mask; padding bits are 0."""
    rows = mask.shape[0]
    flat = mask.reshape(rows, -1).tolist()
    cols = len(flat[0])
    nbytes = (cols + 7) // 8
    out = torch.zeros(rows, nbytes, dtype=torch.uint8)
    for r in range(rows):
        for b in range(nbytes):
            byte = 0
            for j in range(8):
                c = 8 * b + j
                if c < cols and flat[r][c]:
                    byte |= 1 << j
            out[r, b] = byte
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip(shape):
    mask = _random_mask(shape, seed=sum(shape))
    packed = bits.pack(mask)
    cols = mask[0].numel() if mask.dim() > 1 else 1
    assert packed.dtype == torch.uint8
    assert packed.shape == (shape[0], bits.packed_cols(cols))
    back = bits.unpack(packed, mask.shape)
    assert back.dtype == torch.bool and back.shape == mask.shape
    assert torch.equal(back, mask)


@pytest.mark.parametrize("shape", SHAPES)
def test_layout_matches_documented_bit_order(shape):
    mask = _random_mask(shape, seed=7 * len(shape) + shape[0])
    assert torch.equal(bits.pack(mask), _pack_by_hand(mask))


@pytest.mark.parametrize("cols", [1, 5, 9, 15, 17, 23])
def test_padding_bits_are_zero(cols):
    mask = torch.ones(4, cols, dtype=torch.bool)
    packed = bits.pack(mask)
    used = cols % 8
    # The last byte holds `used` low bits and zero padding above them.
    assert torch.all(packed[:, -1] == (1 << used) - 1)
    assert torch.all(packed[:, :-1] == 255)
    assert bits.popcount(packed) == 4 * cols


def test_single_bits_land_at_their_column():
    rows, cols = 3, 21
    for r, c in [(0, 0), (1, 7), (2, 8), (0, 20), (1, 13)]:
        mask = torch.zeros(rows, cols, dtype=torch.bool)
        mask[r, c] = True
        packed = bits.pack(mask)
        expected = torch.zeros(rows, 3, dtype=torch.uint8)
        expected[r, c // 8] = 1 << (c % 8)
        assert torch.equal(packed, expected)


def test_conv_weight_rows_are_first_dim():
    mask = _random_mask((4, 3, 3, 3), seed=3)  # 27 columns per output channel
    packed = bits.pack(mask)
    assert packed.shape == (4, 4)
    for r in range(4):
        assert torch.equal(bits.pack(mask[r:r + 1]), packed[r:r + 1])


def test_non_contiguous_mask_packs_its_logical_values():
    mask = _random_mask((9, 6), seed=11)
    view = mask.t()
    assert not view.is_contiguous()
    assert torch.equal(bits.pack(view), bits.pack(view.contiguous()))
    assert torch.equal(bits.unpack(bits.pack(view), view.shape), view)


@pytest.mark.parametrize("shape", SHAPES)
def test_popcount_counts_set_bits(shape):
    mask = _random_mask(shape, seed=5 + shape[-1])
    assert bits.popcount(bits.pack(mask)) == int(mask.sum())


def test_packed_cols():
    assert [bits.packed_cols(c) for c in (1, 7, 8, 9, 16, 17)] == [1, 1, 1, 2, 2, 3]


def test_pack_rejects_non_bool():
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        bits.pack(torch.ones(3, 4))
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        bits.pack(torch.ones(3, 4, dtype=torch.uint8))


def test_pack_rejects_scalar():
    with pytest.raises(ValueError, match="at least one dimension"):
        bits.pack(torch.tensor(True))


def test_unpack_rejects_wrong_dtype():
    with pytest.raises(TypeError, match="bits must be uint8"):
        bits.unpack(torch.zeros(3, 1, dtype=torch.int32), (3, 5))


@pytest.mark.parametrize("shape", [(3, 17), (4, 5), (3, 8)])
def test_unpack_rejects_bits_of_another_shape(shape):
    packed = bits.pack(torch.ones(3, 9, dtype=torch.bool))  # (3, 2)
    with pytest.raises(ValueError, match=r"expected \("):
        bits.unpack(packed, shape)


@pytest.mark.parametrize("shape", [(0, 5), (0,), (0, 3, 2, 2)])
def test_empty_masks_round_trip(shape):
    mask = torch.zeros(shape, dtype=torch.bool)
    packed = bits.pack(mask)
    assert packed.shape[0] == 0
    assert torch.equal(bits.unpack(packed, shape), mask)
    assert bits.popcount(packed) == 0
