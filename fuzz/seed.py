#!/usr/bin/env python3
"""Seeds the fuzz corpora from the volume test fixtures (standard library only).

    python3 fuzz/seed.py        # writes fuzz/corpus/<target>/
"""
import gzip
import pathlib
import struct
import zlib

root = pathlib.Path(__file__).resolve().parent
fixtures = root.parent / "tests" / "fixtures" / "volume"
corpus = root / "corpus"


def put(target, name, data):
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def mha(dims, ty, data, extra=""):
    head = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"{extra}TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
        f"ElementSpacing = 0.7 0.7 2.5\nDimSize = {dims}\nElementType = {ty}\n"
    )
    return head.encode(), data


for f in sorted(fixtures.glob("*.mha")):
    put("metaimage", f.name, f.read_bytes())
raw = struct.pack("<8h", -1000, -900, 0, 40, 300, 1200, -1024, 3071)
h, d = mha("2 2 2", "MET_SHORT", raw)
put("metaimage", "small_raw.mha", h + b"ElementDataFile = LOCAL\n" + d)
z = zlib.compress(raw)
h, d = mha("2 2 2", "MET_SHORT", z, f"CompressedData = True\nCompressedDataSize = {len(z)}\n")
put("metaimage", "small_zlib.mha", h + b"ElementDataFile = LOCAL\n" + d)

# Detached: 2-byte header length, header, data file.
for name, (h, d) in {
    "raw": mha("2 2 2", "MET_SHORT", raw),
    "zlib": mha("2 2 2", "MET_SHORT", z, f"CompressedData = True\nCompressedDataSize = {len(z)}\n"),
    "headersize": mha("2 2 2", "MET_SHORT", b"\0" * 16 + raw, "HeaderSize = 16\n"),
    "headersize_end": mha("2 2 2", "MET_SHORT", b"junk" + raw, "HeaderSize = -1\n"),
}.items():
    h = h + b"ElementDataFile = case.raw\n"
    put("metaimage_detached", name, struct.pack("<H", len(h)) + h + d)

for f in sorted(fixtures.glob("*.nii")):
    put("nifti", f.name, f.read_bytes())
    put("nifti_gz", f.name, b"\0" + f.read_bytes())
for f in sorted(fixtures.glob("*.nii.gz")):
    put("nifti", f.name[:-3], gzip.decompress(f.read_bytes()))
    put("nifti_gz", f.name, b"\1" + f.read_bytes())
print("seeded", {d.name: len(list(d.iterdir())) for d in sorted(corpus.iterdir())})
