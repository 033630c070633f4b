"""Building blocks: backbones, heads, distributed helpers."""
