import pytest
import torch

from eaq.deploy import pack_codes, unpack_codes
from eaq.quant import quant_range


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, 12, 16])
@pytest.mark.parametrize("signed", [True, False])
def test_pack_round_trip_every_code(bits, signed):
    qmin, qmax = quant_range(bits, signed)
    codes = torch.arange(qmin, qmax + 1)
    codes = torch.cat([codes, codes.flip(0)])[:4096].reshape(-1)
    packed = pack_codes(codes, bits, qmin)
    assert packed.dtype == torch.uint8
    assert packed.numel() == -(-codes.numel() * bits // 8)  # packed to the width
    back = unpack_codes(packed, bits, qmin, tuple(codes.shape))
    assert back.dtype == torch.int32
    assert torch.equal(back, codes.to(torch.int32))


def test_two_4bit_codes_per_byte_low_nibble_first():
    packed = pack_codes(torch.tensor([-8, -7, 7, 0]), 4, -8)
    # -8 -> 0, -7 -> 1: byte 0x10; 7 -> 15, 0 -> 8: byte 0x8F
    assert packed.tolist() == [0x10, 0x8F]


def test_four_6bit_codes_in_three_bytes():
    codes = torch.tensor([[-32, 31], [0, 5]])
    packed = pack_codes(codes, 6, -32)
    assert packed.numel() == 3
    assert torch.equal(unpack_codes(packed, 6, -32, (2, 2)), codes.to(torch.int32))


def test_codes_outside_the_range_are_refused():
    with pytest.raises(ValueError, match="4-bit range"):
        pack_codes(torch.tensor([8]), 4, -8)
