"""fishzoo.hub.config: reading config.json, whatever the file holds."""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fishzoo.hub import HubFolderError, read_hub_config

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)


config_like = st.fixed_dictionaries({}, optional={
    'architecture': st.sampled_from(['fishnet_s64', 'resnet18', 'nope', '']) | st.integers() | st.none(),
    'num_classes': st.integers(-3, 5) | st.text(max_size=3) | st.none() | st.booleans(),
    'pretrained_cfg': json_values, 'model_args': json_values, 'label_names': json_values})


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(config_like.map(json.dumps), json_values.map(json.dumps), st.text(max_size=200),
                          st.binary(max_size=200)))
def test_fuzz_hub_config_reader(tmp_path, document):
    folder = tmp_path / 'fuzz'
    folder.mkdir(exist_ok=True)
    path = folder / 'config.json'
    path.write_bytes(document if isinstance(document, bytes) else document.encode('utf-8', 'surrogatepass'))
    try:
        config = read_hub_config(folder)
    except HubFolderError as e:
        assert str(path) in str(e)
    else:
        assert isinstance(config['architecture'], str)
