"""A DataConfig built by hand in Python (not through build_config) is checked too, before any
row is rendered: a bad value is an error even when no row would need truncating."""

from __future__ import annotations

import pytest

from rlhfkit.config import DataConfig
from rlhfkit.data.tokenize import tokenize_records
from rlhfkit.errors import ConfigError

ROWS = [{"kind": "prompt_completion", "row": 0, "prompt": "q", "completion": " a"}]


@pytest.mark.parametrize("kw,text", [({"prompt_truncation": "middle"}, "drop, left"),
                                     ({"completion_truncation": "left"}, "right, drop"),
                                     ({"max_length": 1}, ">= 2"),
                                     ({"max_prompt_length": -1}, ">= 0")])
def test_tokenize_records_rejects_bad_data_config_without_truncation(tok, kw, text):
    with pytest.raises(ConfigError) as ei:
        tokenize_records(ROWS, tok, DataConfig(**kw))
    assert text in str(ei.value)
