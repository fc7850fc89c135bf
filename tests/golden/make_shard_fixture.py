"""Makes fixtures/postln_sharded: the committed postln fixture model saved again by transformers'
own `save_pretrained` with a small `max_shard_size`, so it comes as several
`model-0000i-of-0000n.safetensors` shards plus `model.safetensors.index.json` (the layout of the
XL/XXL checkpoints on the Hugging Face hub). `tests/cli_shards.rs` loads it and checks that it gives
the same weights and logits as `fixtures/postln/model.safetensors`.

    .venv-golden/bin/python tests/golden/make_shard_fixture.py
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM

HERE = Path(__file__).resolve().parent / "fixtures"
SRC = HERE / "postln"
OUT = HERE / "postln_sharded"
# The fixture's weights are about 120 kB: 40 kB shards make several.
MAX_SHARD_SIZE = "40KB"


def main():
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_pretrained(str(SRC)).eval()
    if OUT.exists():
        shutil.rmtree(OUT)
    model.save_pretrained(str(OUT), safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
    shutil.copy(SRC / "tokenizer.json", OUT / "tokenizer.json")
    index = json.loads((OUT / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    if len(shards) < 3:
        sys.exit(f"expected at least 3 shards, transformers wrote {shards}")
    # The sharded copy must load back to the same model.
    again = AutoModelForMaskedLM.from_pretrained(str(OUT)).eval()
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.tensor([[0, 5, 9, 301, 17, 2]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    print(f"wrote {OUT} ({len(shards)} shards: {', '.join(shards)})")


if __name__ == "__main__":
    main()
