"""Writes a small folder of colour photos for `dmae train --data folder:DIR` (docs/results.md,
"Colour photos"): crops of the public-domain / CC0 photos that scikit-image ships with its
package (no download), one class per photo.

    python3 -m venv /tmp/sk && /tmp/sk/bin/pip install scikit-image
    /tmp/sk/bin/python datasets/photos/make_photos.py runs/photos   # -> runs/photos/{train,val}/<photo>/

Each image is a random crop (a side of 18-60% of the photo's shorter side, aspect 3/4-4/3) saved
at a random size of 40-96 px, as PNG or JPEG (quality 90), so the folder has the mixed sizes and
formats of real data. Deterministic (seed 0). Licences, from scikit-image's `skimage.data`
docstrings:

| class | photo | licence |
|---|---|---|
| astronaut | Eileen Collins, NASA | public domain |
| cat | `chelsea`, Stefan van der Walt | CC0 |
| coffee | Rachel Michetti | CC0 |
| rocket | DSCOVR launch, SpaceX | public domain |
| hubble | Hubble eXtreme Deep Field, NASA | public domain |
| ihc | `immunohistochemistry`, colonic glands (CMMI) | no known copyright restrictions |
| retina | Häggström, Wikimedia Commons | CC0 1.0 |
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

PHOTOS = {
    "astronaut": data.astronaut,
    "cat": data.chelsea,
    "coffee": data.coffee,
    "rocket": data.rocket,
    "hubble": data.hubble_deep_field,
    "ihc": data.immunohistochemistry,
    "retina": data.retina,
}
SPLITS = {"train": 120, "val": 20}


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    for name, load in PHOTOS.items():
        photo = load()
        h, w = photo.shape[:2]
        for split, count in SPLITS.items():
            d = out / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = rng.uniform(0.18, 0.6) * min(h, w)
                aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
                ch = int(min(h, side / np.sqrt(aspect)))
                cw = int(min(w, side * np.sqrt(aspect)))
                y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
                crop = Image.fromarray(photo[y : y + ch, x : x + cw])
                size = int(rng.integers(40, 97))
                crop = crop.resize((size, max(8, round(size * ch / cw))), Image.LANCZOS)
                if i % 2:
                    crop.save(d / f"{i:03d}.jpg", quality=90)
                else:
                    crop.save(d / f"{i:03d}.png")
    n = sum(len(PHOTOS) * c for c in SPLITS.values())
    print(f"wrote {n} images of {len(PHOTOS)} classes to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/photos"))
