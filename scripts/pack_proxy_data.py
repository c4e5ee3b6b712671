#!/usr/bin/env python3
"""Pack the shared training archives small enough to carry to a GPU machine (for train_proxy_clip.py).

The three archives in ../shared/data hold ~180 MB, most of it tar padding, repeated JPEG headers and
224 px Imagenette photos that training shrinks to 64 px anyway. This writes a folder that
`train_proxy_clip.py --data DIR` reads like the original one:

  * cifar10-train.tar.xz, cifar10-test.tar.xz: the original archives, recompressed (lossless: the same
    JPEG files, byte for byte);
  * imagenette-train.tar.xz: every Imagenette photo (held-out ones included, same folder layout and file
    names, so the held-out rule picks the same files) passed through open_clip's eval transform at
    --size px (resize shortest side, bicubic, center crop) and saved as a quality --quality JPEG. At
    --size equal to the model's input size this is what training decodes anyway, up to JPEG rounding;
  * imagenette-classes.tsv, copied;
  * PACK.json: what was done, with the sha256 of every archive.

Accuracy is always measured on the original files (`edgeclip eval` on ../shared/data), never on the pack.

Example:
    python scripts/pack_proxy_data.py --out .devdata   # ~42 MB, about 1.5 min
"""
from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from edgeclip.bundle import sha256_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def recompress(src: Path, dst: Path) -> None:
    """Lossless: the same tar stream, xz-compressed (removes tar padding and repeated JPEG headers)."""
    with open(src, "rb") as fin, lzma.open(dst, "wb", preset=9 | lzma.PRESET_EXTREME) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def shrink_imagenette(src: Path, dst: Path, size: int, quality: int) -> int:
    """Re-encode every photo of the Imagenette archive at `size` px; returns the number of images."""
    import io

    from PIL import Image
    from tqdm import tqdm

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_proxy_clip import pil_eval_steps  # the very transform training decodes with

    steps = pil_eval_steps(size)
    n = 0
    with tarfile.open(src) as tin, tarfile.open(dst, "w:xz") as tout:
        members = tin.getmembers()
        for m in tqdm(members, desc=f"imagenette -> {size}px q{quality}", unit="img"):
            if not m.isfile():
                tout.addfile(m)
                continue
            with tin.extractfile(m) as f, Image.open(f) as im:
                im = im.convert("RGB")
                for t in steps:
                    im = t(im)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality)
            info = tarfile.TarInfo(m.name)
            info.size = buf.tell()
            info.mtime = m.mtime
            buf.seek(0)
            tout.addfile(info, buf)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the shared archives")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=64, help="Imagenette size in px (the proxies' input size)")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality of the shrunk Imagenette photos")
    args = ap.parse_args(argv)

    for name in ("cifar10-train.tar", "cifar10-test.tar", "imagenette-train.tar", "imagenette-classes.tsv"):
        if not (args.data / name).is_file():
            print(f"error: {args.data / name} not found (pass --data DIR holding the shared archives)",
                  file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        tmp = Path(tmp)
        for name in ("cifar10-train.tar", "cifar10-test.tar"):
            print(f"recompressing {name}", flush=True)
            recompress(args.data / name, tmp / f"{name}.xz")
        n = shrink_imagenette(args.data / "imagenette-train.tar", tmp / "imagenette-train.tar.xz",
                              args.size, args.quality)
        shutil.copyfile(args.data / "imagenette-classes.tsv", tmp / "imagenette-classes.tsv")
        files = {}
        for p in sorted(tmp.iterdir()):
            files[p.name] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            p.replace(args.out / p.name)
    (args.out / "PACK.json").write_text(json.dumps({
        "source": str(args.data), "imagenette_size": args.size, "imagenette_quality": args.quality,
        "imagenette_images": n, "files": files,
        "note": "CIFAR-10 archives lossless; Imagenette shrunk and re-encoded; measure accuracy on the originals",
    }, indent=2) + "\n")
    total = sum(f["bytes"] for f in files.values())
    print(f"wrote {args.out} ({total / 1e6:.1f} MB): " + ", ".join(f"{k} {v['bytes'] / 1e6:.1f} MB"
                                                                 for k, v in files.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
