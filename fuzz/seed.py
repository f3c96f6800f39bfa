#!/usr/bin/env python3
"""Seeds the fuzz corpora from the volume and DICOM test fixtures (standard library only).

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
# Pipeline: a 24^3 chest at 14 mm (soft-tissue body, two lungs, air around), several layouts.
def chest(n=24):
    c = (n - 1) / 2
    vals = []
    for z in range(n):
        for y in range(n):
            for x in range(n):
                v = -1000
                if ((x - c) / 10) ** 2 + ((y - c) / 8) ** 2 < 1:
                    v = 40
                for cx in (c - 4.5, c + 4.5):
                    if ((x - cx) / 3.5) ** 2 + ((y - c) / 5) ** 2 + ((z - c) / 9) ** 2 < 1:
                        v = -850
                vals.append(v)
    return vals


def chest_mha(vals, n, spacing, direction="1 0 0 0 1 0 0 0 1", compress=True):
    raw = struct.pack(f"<{len(vals)}h", *vals)
    data = zlib.compress(raw, 9) if compress else raw
    h = "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
    if compress:
        h += f"CompressedData = True\nCompressedDataSize = {len(data)}\n"
    h += (
        f"TransformMatrix = {direction}\nOffset = 0 0 0\nElementSpacing = {spacing}\n"
        f"DimSize = {n} {n} {n}\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    return h.encode() + data


vals = chest()
put("pipeline", "chest_z.mha", chest_mha(vals, 24, "14 14 14"))
half = [vals[x + 24 * (y + 24 * z)] for z in range(0, 24, 2) for y in range(0, 24, 2) for x in range(0, 24, 2)]
put("pipeline", "chest_raw.mha", chest_mha(half, 12, "28 28 28", compress=False))
put("pipeline", "chest_flipped.mha", chest_mha(vals, 24, "14 14 14", "-1 0 0 0 1 0 0 0 -1"))
cos, sin = 0.984807753012208, 0.17364817766693033
put("pipeline", "chest_oblique.mha", chest_mha(vals, 24, "14 14 14", f"1 0 0 0 {cos} {sin} 0 {-sin} {cos}"))
# DICOM: files of the DICOM fixtures, one or two per input, each after its 2-byte length.
def framed(*files):
    return b"".join(struct.pack("<H", len(f)) + f for f in files)


dicom = fixtures.parent / "dicom"
for folder in sorted(p for p in dicom.rglob("*") if p.is_dir()):
    files = sorted(f for f in folder.iterdir() if f.is_file())
    if files:
        put("dicom", f"{folder.name}_1", framed(files[0].read_bytes()))
    if len(files) > 1:
        put("dicom", f"{folder.name}_2", framed(files[0].read_bytes(), files[1].read_bytes()))
for f in sorted((dicom / "bad").glob("*.dcm")):
    put("dicom", f.stem, framed(f.read_bytes()))
print("seeded", {d.name: len(list(d.iterdir())) for d in sorted(corpus.iterdir())})
