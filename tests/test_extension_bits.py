"""The extension's packed-bit ops (dgm.ops.extension) against the reference dgm.bits."""

import subprocess
import sys

import pytest
import torch

from dgm import bits as ref
from dgm.ops import extension as ext

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
SHAPES = [(1, 1), (3, 5), (7, 9), (2, 8), (4, 17), (5, 3, 3, 3), (13,), (6, 0), (0, 5), (3, 2, 1, 11)]


def test_extension_is_loaded():
    from dgm import ops

    assert ops.unavailable_reason("extension", "bits", torch.device("cpu")) is None
    assert ext.unavailable_reason("cpu") is None
    assert (ext.unavailable_reason("cuda") is None) == ext.WITH_CUDA


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
def test_pack_unpack_match_reference(device, shape):
    g = torch.Generator().manual_seed(hash(shape) % 1000)
    mask = (torch.rand(shape, generator=g) < 0.4).to(device)
    packed = ext.pack(mask)
    assert packed.dtype == torch.uint8 and packed.device.type == device
    assert torch.equal(packed, ref.pack(mask))
    assert torch.equal(ext.unpack(packed, shape), mask)
    assert torch.equal(ext.unpack(packed, shape), ref.unpack(packed, shape))


@pytest.mark.parametrize("device", DEVICES)
def test_pack_reads_non_contiguous_masks(device):
    mask = (torch.rand(9, 6) < 0.5).to(device).t()
    assert not mask.is_contiguous()
    assert torch.equal(ext.pack(mask), ref.pack(mask.contiguous()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 5), (7, 9, 2), (11,), (4, 64), (0, 3)])
def test_popcount_matches_reference(device, shape):
    a = torch.rand(shape) < 0.3
    pa = ref.pack(a).to(device)
    assert ext.popcount(pa) == ref.popcount(pa) == int(a.sum())


def test_bad_inputs_name_the_argument():
    with pytest.raises(RuntimeError, match="mask must be a bool tensor"):
        ext.pack(torch.zeros(3, 4))
    with pytest.raises(RuntimeError, match=r"expected \(3, 1\)"):
        ext.unpack(torch.zeros(3, 2, dtype=torch.uint8), (3, 5))
    with pytest.raises(RuntimeError, match="bits must be uint8"):
        ext.unpack(torch.zeros(3, 1), (3, 5))
    with pytest.raises(RuntimeError, match="popcount: bits must be uint8"):
        ext.popcount(torch.zeros(4, dtype=torch.int32))


def test_ops_are_registered_for_torch_compile():
    """Schemas, fake (meta) kernels and their agreement with the real ones, as torch checks them."""
    mask = torch.rand(5, 3, 3) < 0.5
    bits = ext.pack(mask)
    torch.library.opcheck(torch.ops.dgm.pack_bits.default, (mask,))
    torch.library.opcheck(torch.ops.dgm.unpack_bits.default, (bits, [5, 3, 3]))
    torch.library.opcheck(torch.ops.dgm.popcount.default, (bits,))


def test_missing_extension_is_reported_and_leaves_the_other_backends():
    """Without dgm._C: one warning naming the failed import, the extension listed as unusable with
    that error, an explicit request refused with it, and auto and the reference unaffected."""
    code = (
        "import sys, warnings; sys.modules['dgm._C'] = None\n"
        "import torch\n"
        "from dgm import ops\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    rows = {r.backend: r for r in ops.available('cpu')}\n"
        "assert [str(w.message) for w in caught if w.category is ops.BackendImportWarning] == [\n"
        "    \"dgm.ops: backend 'extension' is unusable: \" + ops._IMPORT_ERRORS['extension']], caught\n"
        "assert not rows['extension'].usable and 'dgm.ops.extension failed' in rows['extension'].reason\n"
        "assert rows['reference'].usable\n"
        "reason = ops.unavailable_reason('extension', 'conv2d', torch.device('cpu'))\n"
        "assert reason is not None and 'dgm._C' in reason, reason\n"
        "try:\n"
        "    ops.conv2d(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 1, 1), backend='extension')\n"
        "except ops.BackendUnavailable as exc:\n"
        "    assert 'dgm._C' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('the extension backend ran without its extension')\n"
        "assert ops.resolve('auto', 'conv2d', torch.device('cpu')) == 'reference'\n"
        "assert ops.resolve('auto', 'frozen_adam', torch.device('cpu')) == 'reference'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("device", DEVICES)
def test_layers_pack_with_the_extension_only_on_a_fused_cuda_device(device):
    """What :class:`~dgm.MaskedLayer` packs with: the extension's kernels for fused backends on a GPU
    (consolidation and growth, one pass each), the reference elsewhere."""
    from dgm import MaskedLinear, ops

    device = torch.device(device)
    fused = device.type == "cuda" and ext.WITH_CUDA
    assert ops.bit_ops("reference", device) is ref
    for backend in ("auto", "extension", "triton"):
        assert ops.bit_ops(backend, device) is (ext if fused else ref)
    layer = MaskedLinear(13, 11, mask="weight", backend="auto", device=device)
    with torch.no_grad():
        layer.mask_logits.uniform_(-1, 1)
    want = ref.pack(layer.mask_logits > 0)
    layer.consolidate()
    assert torch.equal(layer.task_bits(0), want)
    layer.expand(out_extra=5, in_extra=3)
    assert torch.equal(ref.unpack(layer.reserved_bits, (16, 16))[:11, :13], ref.unpack(want, (11, 13)))
