"""Write the prompts of HH-RLHF preference rows as an RL prompt file (prompt-only rows).

    python examples/hh_prompts.py ../shared/data/hh-rlhf-harmless/test.jsonl.gz 0:2000 runs/hh_prompts_train.jsonl

The implicit prompt of each pair (the dialogue up to the last assistant turn) is parsed into
chat messages by the data layer, exactly as the DPO and reward-model recipes see it.
"""

from __future__ import annotations

import json
import os
import sys

from rlhfkit.config import DataConfig
from rlhfkit.data.pipeline import load_records


def main(src: str, rows: str, dst: str) -> None:
    recs = load_records(src, rows, DataConfig(skip_invalid=True), ("preference",), print)
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    with open(dst, "w") as f:
        for r in recs:
            f.write(json.dumps({"prompt": r["prompt"]}) + "\n")
    print(f"wrote {len(recs)} prompts to {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
