"""timm's private helpers fishzoo uses, imported here and nowhere else.

timm has no public name for these; each is checked on the timm versions ``pyproject.toml`` allows (the range
the compatibility job tests, docs/development.md). Should timm rename one, this file is the one to change.

=============================  ==============================================================================
``feature_take_indices``        which levels ``forward_intermediates(indices=...)`` returns, timm's own rule
``FeatureGetterNet``            a ``features_only`` wrapper that calls ``forward_intermediates``
``save_config_for_hf``          the ``config.json`` ``save_for_hf`` writes, without the weights
``_resolve_pretrained_source``  where timm would load pretrained weights from (url, file, local-dir, hf-hub)
=============================  ==============================================================================

Checked on timm 1.0.31.
"""
from timm.models._builder import _resolve_pretrained_source as resolve_pretrained_source
from timm.models._features import FeatureGetterNet, feature_take_indices
from timm.models._hub import save_config_for_hf

__all__ = ['FeatureGetterNet', 'feature_take_indices', 'resolve_pretrained_source', 'save_config_for_hf']
