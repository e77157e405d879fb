"""segmentation_models_pytorch with fishzoo's models as ``tu-`` encoders, as smp's users write them."""
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

smp = pytest.importorskip('segmentation_models_pytorch')  # the [dense] extra; the test extra installs it

from fishzoo.hub import save_pretrained  # noqa: E402

ENCODERS = ['fishnet99', 'fishnet150', 'fishnet201', 'fishnext150', 'mobilenetv2_dual_050', 'mobilenetv2_dual_100']
# every smp architecture that takes a tu- encoder (DPT, made for ViTs, wraps the encoder its own way: output only)
ARCHITECTURES = ['Unet', 'UnetPlusPlus', 'MAnet', 'Linknet', 'FPN', 'PSPNet', 'PAN', 'DeepLabV3', 'DeepLabV3Plus',
                 'UPerNet', 'Segformer', 'DPT']
FAST = [('fishnet99', 'Unet'), ('fishnet99', 'FPN'), ('fishnet99', 'DeepLabV3Plus'),
        ('mobilenetv2_dual_050', 'DeepLabV3Plus')]
SIZES = {'PAN': (128, 160)}  # PAN pools the stride-32 map further: 64 px is too small for it


def _check(encoder, architecture):
    model = getattr(smp, architecture)(f'tu-{encoder}', encoder_weights=None, classes=3).eval()
    H, W = SIZES.get(architecture, (64, 96))
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        out = model(x)
        maps = model.encoder(x)
    assert out.shape == (1, 3, H, W)  # the input's size (FPN gave twice it while smp took FishNets for transformers)
    if architecture == 'DPT':
        return
    # smp's convention: the input, then strides 2, 4, 8, 16, 32 up to the encoder's depth and output stride
    depth = len(maps) - 1
    output_stride = model.encoder.output_stride
    strides = [min(2 ** i, output_stride) for i in range(1, depth + 1)]
    expected = [(H, W)] + [(H // s, W // s) for s in strides]
    assert [tuple(m.shape[-2:]) for m in maps] == expected
    channels = timm.create_model(encoder, features_only=True).feature_info.channels()
    assert model.encoder.out_channels == [3] + channels[:depth]
    assert [m.shape[1] for m in maps] == [3] + channels[:depth]


@pytest.mark.parametrize('encoder, architecture', FAST)
def test_common_architectures(encoder, architecture):
    _check(encoder, architecture)


# The three architectures with every encoder; every architecture with one encoder of each family (the
# FishNets differ in depth and width only: smp sees the same five levels)
MATRIX = sorted({(e, a) for e in ENCODERS for a in ('Unet', 'FPN', 'DeepLabV3Plus')}
                | {(e, a) for e in ('fishnet99', 'mobilenetv2_dual_050') for a in ARCHITECTURES})


@pytest.mark.slow
@pytest.mark.parametrize('encoder, architecture', [c for c in MATRIX if c not in FAST])
def test_every_architecture_and_encoder(encoder, architecture):
    _check(encoder, architecture)


def test_deeplab_uses_the_dilated_fishnet():
    """smp asks DeepLabV3 for output stride 8 and DeepLabV3+ for 16: the encoder is the dilated FishNet."""
    for architecture, output_stride in (('DeepLabV3', 8), ('DeepLabV3Plus', 16)):
        encoder = getattr(smp, architecture)('tu-fishnet99', encoder_weights=None).encoder
        assert encoder.model.feature_info.reduction() == [min(s, output_stride) for s in (2, 4, 8, 16, 32)]


def test_lowres_fishnet_as_a_shallow_encoder():
    """The low-resolution FishNets give strides 1 to 8: smp takes them (its 'VGG-style' encoders) at depth 3."""
    model = smp.Unet('tu-fishnet_m64', encoder_weights=None, encoder_depth=3, decoder_channels=(64, 32, 16),
                     classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_fine_tuned_folder_as_encoder_in_a_fresh_interpreter(tmp_path):
    """A fishzoo folder is an smp encoder with its trained weights, without importing fishzoo (timm finds the
    architecture through fishzoo's autoload hook)."""
    classifier = timm.create_model('fishnet99', num_classes=4).eval()
    torch.nn.init.normal_(classifier.stages[9].blocks[0].conv2.weight)
    folder = save_pretrained(classifier, tmp_path / 'fish')
    torch.save(classifier.stages[9].blocks[0].conv2.weight, tmp_path / 'expected.pt')
    script = textwrap.dedent(f'''
        import torch
        import segmentation_models_pytorch as smp
        model = smp.Unet('tu-local-dir:{folder}', encoder_weights=True, classes=2).eval()
        expected = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)
        assert torch.equal(model.encoder.model.model.stages[9].blocks[0].conv2.weight, expected)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize('encoder', ['fishnet99', 'fishnext150', 'mobilenetv2_dual_050'])
def test_tu_encoders_script(encoder):
    """smp declares tu- encoders scriptable (its tu-resnet18 scripts): fishzoo's do too, and a scripted Unet
    segments as the eager one does."""
    model = smp.Unet(f'tu-{encoder}', encoder_weights=None, classes=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, expected in zip(torch.jit.script(model.encoder)(x), model.encoder(x)):
            torch.testing.assert_close(ours, expected)
        torch.testing.assert_close(torch.jit.script(model)(x), model(x), rtol=1e-4, atol=1e-4)
