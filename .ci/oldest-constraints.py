"""The compatibility job's oldest versions: every lower bound pyproject.toml gives the libraries fishzoo is
built on (its own dependencies and the transformers the test extra reads folders with), as ``name==bound``.

    python3 .ci/oldest-constraints.py > oldest.txt && pip install -e ".[train,hf]" -c oldest.txt ...
"""
import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

# the libraries whose oldest claimed release the job installs; the rest resolve to what these allow
CHECKED = ('torch', 'timm', 'huggingface_hub', 'safetensors', 'accelerate', 'transformers')

project = tomllib.loads((Path(__file__).resolve().parents[1] / 'pyproject.toml').read_text())['project']
requirements = project['dependencies'] + project['optional-dependencies']['test']
for name in CHECKED:
    bounds = [m.group(1) for r in requirements
              for m in [re.match(rf'^{name}\s*>=\s*([\w.]+)', r.replace('-', '_'))] if m]
    if len(bounds) != 1:
        raise SystemExit(f'pyproject.toml: expected one lower bound for {name}, found {bounds}')
    print(f'{name}=={bounds[0]}')
