"""fishzoo.hub.schema: what a config.json may hold."""
import re

import pytest

from fishzoo.cli import main as cli_main
from fishzoo.hub import HubFolderError, read_hub_config
from tests.helpers.hostile import edit_config, edit_pretrained_cfg, one_line


@pytest.mark.parametrize('changes, message', [
    (dict(crop_pct=1e-4), '"pretrained_cfg.crop_pct" must be a number from 0.1 to 2, got 0.0001'),
    (dict(input_size=[1, 100000, 100000]), '"pretrained_cfg.input_size" must be [channels 1-4, height, width]'),
    (dict(input_size=[3, 64]), '"pretrained_cfg.input_size" must be'),
    (dict(mean='0.5'), '"pretrained_cfg.mean" must be 3 numbers'),
    (dict(mean=[0.5, 0.5]), '"pretrained_cfg.mean" must be 3 numbers'),
    (dict(std=[0.2, 0.0, 0.2]), '"pretrained_cfg.std" must be 3 positive numbers'),
    (dict(interpolation=3), '"pretrained_cfg.interpolation" must be one of'),
    (dict(crop_mode='sideways'), '"pretrained_cfg.crop_mode" must be one of'),
])
def test_preprocessing_values_are_checked(hub_folder, tmp_path, capsys, changes, message):
    """Wrong types and lengths failed deep in the transforms (TypeError, IndexError); sizes and crop fractions
    that make one image gigabytes are refused before any image is read."""
    _, folder = hub_folder
    edit_pretrained_cfg(folder, **changes)
    image = tmp_path / 'x.png'
    from PIL import Image
    Image.new('RGB', (64, 64)).save(image)
    assert cli_main(['predict', str(folder), str(image)]) == 2
    one_line(capsys, message)
    with pytest.raises(HubFolderError, match=re.escape(message)):
        read_hub_config(folder)


def test_an_architecture_name_carries_no_markup(hub_folder):
    """An architecture tag with HTML passed the check and reached the card's title and the demo page's."""
    _, folder = hub_folder
    edit_config(folder, architecture='fishnet_s64.<img src=x onerror=alert(1)>')
    with pytest.raises(HubFolderError, match='"architecture" must be a timm model name'):
        read_hub_config(folder)
