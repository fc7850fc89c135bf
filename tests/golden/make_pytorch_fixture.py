"""PyTorch-format fixtures for `dlm-engine convert` (tests/convert_pytorch.rs), in fixtures/pytorch/:

- model/: the post-LN golden model (fixtures/postln, itself written as safetensors by
  make_golden.py) loaded with transformers and saved as PyTorch's zip format (pytorch_model.bin:
  a zip of data.pkl, one file per storage, version), with its config.json;
- mixed.bin / mixed.safetensors: what the reader must handle beyond a plain state dict (f16 and
  bf16 storages, a transposed view, a view at a storage offset, two tensors sharing one storage),
  with the expected values as contiguous safetensors;
- mixed_zip64.bin: mixed.bin's entries rewritten with every zip64 structure a checkpoint over
  4 GB has (zip64 extra fields, the zip64 end-of-directory record and its locator), forced by
  lowering zipfile's limits;
- foreign_global.bin: a zip laid out as torch.save writes it whose data.pkl calls builtins.print,
  which the reader must refuse without running anything.

Run with .venv-golden/bin/python tests/golden/make_pytorch_fixture.py (torch CPU + transformers).
"""
import pickle
import shutil
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import XLMRobertaForMaskedLM

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OUT = FIXTURES / "pytorch"


def save_model():
    model = XLMRobertaForMaskedLM.from_pretrained(str(FIXTURES / "postln"))
    out = OUT / "model"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.config.save_pretrained(str(out))
    # What save_pretrained(safe_serialization=False) writes for a single shard: torch.save of the
    # state dict (the tied decoder shares the word embeddings' storage).
    torch.save(model.state_dict(), str(out / "pytorch_model.bin"))


def save_mixed():
    g = torch.Generator().manual_seed(7)
    base = torch.randn(6, 5, generator=g)
    shared = torch.randn(4, 3, generator=g)
    tensors = {
        "half": torch.randn(3, 4, generator=g).half(),
        "bfloat": torch.randn(2, 7, generator=g).bfloat16(),
        "transposed": base.t(),
        "offset": base.view(-1)[7:19].view(3, 4),
        "shared_a": shared,
        "shared_b": shared,
        "scalar": torch.tensor(2.5),
    }
    torch.save(tensors, str(OUT / "mixed.bin"))
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(OUT / "mixed.safetensors"))


def save_zip64():
    src = zipfile.ZipFile(OUT / "mixed.bin")
    limits = (zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT)
    # Every size, offset and count then counts as overflowing.
    zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = 1, 1
    try:
        with zipfile.ZipFile(OUT / "mixed_zip64.bin", "w", zipfile.ZIP_STORED) as z:
            for info in src.infolist():
                with z.open(zipfile.ZipInfo(info.filename, (1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as f:
                    f.write(src.read(info.filename))
    finally:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = limits
    # zipfile still writes the true (small) numbers into the classic end record; a file over 4 GB
    # has them all overflowed, which sends a reader to the zip64 record.
    data = bytearray((OUT / "mixed_zip64.bin").read_bytes())
    end = data.rindex(b"PK\x05\x06")
    data[end + 8:end + 20] = b"\xff" * 12
    (OUT / "mixed_zip64.bin").write_bytes(bytes(data))


class Foreign:
    def __reduce__(self):
        return (print, ("a pickle ran code",))


def save_foreign():
    # Fixed timestamps, so a rerun writes the same bytes.
    with zipfile.ZipFile(OUT / "foreign_global.bin", "w", zipfile.ZIP_STORED) as z:
        z.writestr(zipfile.ZipInfo("archive/data.pkl", (1980, 1, 1, 0, 0, 0)), pickle.dumps({"x": Foreign()}, protocol=2))
        z.writestr(zipfile.ZipInfo("archive/version", (1980, 1, 1, 0, 0, 0)), "3\n")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    save_model()
    save_mixed()
    save_zip64()
    save_foreign()
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(p.relative_to(FIXTURES), p.stat().st_size)
