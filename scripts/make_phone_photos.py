"""Make phone-photo-sized eval sets: the proxies' eval images upscaled to 12 MP JPEGs (4000x3000).

Each source image is upscaled (bicubic) to a 3000x3000 square and widened to 4000x3000 with mirrored
margins, so a model's centre crop of the short side sees exactly the upscaled original; it is written as a
JPEG at phone quality (92, 4:2:0). The layout is an image folder that ``edgeclip eval`` reads:

    OUT/cifar10/<class>/NNNN.jpg          the first N CIFAR-10 test images of each class (--cifar, total)
    OUT/imagenette/<wnid>/<name>.JPEG     the proxies' held-out Imagenette list (--imagenette: how many)

    python scripts/make_phone_photos.py --out /tmp/phone --cifar 1000 --imagenette 1900
    edgeclip eval BUNDLE /tmp/phone/cifar10                 # reduced DCT decoding (the default)
    edgeclip eval BUNDLE /tmp/phone/cifar10 --exact-decode  # full-size decoding
    python scripts/make_phone_photos.py --out /tmp/noisy --cifar 0 --imagenette 64 --noise 8  # noisy photos

Disk: about 1 MB per photo. Reads ../shared/data (or --data).
"""
from __future__ import annotations

import argparse
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "packages" / "edgeclip-models" / "edgeclip_models" / "proxy-vit" / "heldout_imagenette.txt"


def phone_photo(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Upscale to a ``height`` square (bicubic) and pad to ``width`` with mirrored margins (landscape)."""
    square = cv2.resize(img, (height, height), interpolation=cv2.INTER_CUBIC)
    extra = width - height
    return cv2.copyMakeBorder(square, 0, 0, extra // 2, extra - extra // 2, cv2.BORDER_REFLECT_101)


def convert(data: bytes, out: Path, width: int, height: int, quality: int, noise: float = 0.0) -> None:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"{out.name}: the source image does not decode")
    photo = phone_photo(img, width, height)
    if noise:  # sensor-like grain: a JPEG full of fine detail, the costly kind to decode
        rng = np.random.default_rng(int.from_bytes(out.name.encode()[-8:], "little"))
        grain = rng.normal(0.0, noise, photo.shape).astype(np.float32)
        photo = np.clip(photo.astype(np.float32) + grain, 0, 255).astype(np.uint8)
    _, buf = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, quality])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(out)


def members(archive: Path, wanted: dict[str, Path]) -> list[tuple[bytes, Path]]:
    """(bytes, destination) of the archive members named in ``wanted`` (skipping ones already made)."""
    todo = {name: dst for name, dst in wanted.items() if not dst.exists()}
    found = []
    with tarfile.open(archive) as tar:
        for m in tar:
            if m.name in todo:
                found.append((tar.extractfile(m).read(), todo[m.name]))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cifar", type=int, default=1000, help="CIFAR-10 test images, evenly over classes (0: none)")
    ap.add_argument("--imagenette", type=int, default=1900, help="held-out Imagenette images (0: none)")
    ap.add_argument("--heldout", type=Path, default=HELDOUT, help="the held-out Imagenette list")
    ap.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT (landscape)")
    ap.add_argument("--quality", type=int, default=92)
    ap.add_argument("--noise", type=float, default=0.0, help="Gaussian grain in grey levels (8: noisy photos)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    jobs: list[tuple[bytes, Path]] = []
    if args.cifar:
        with tarfile.open(args.data / "cifar10-test.tar") as tar:
            names = sorted(m.name for m in tar if m.isfile() and m.name.endswith(".jpg"))
        by_class: dict[str, list[str]] = {}
        for n in names:
            by_class.setdefault(n.split("/")[-2], []).append(n)
        per = max(1, args.cifar // len(by_class))
        wanted = {n: args.out / "cifar10" / c / Path(n).name for c, ns in sorted(by_class.items()) for n in ns[:per]}
        jobs += members(args.data / "cifar10-test.tar", wanted)
    if args.imagenette:
        listed = [line.strip() for line in args.heldout.read_text().splitlines()
                  if line.strip() and not line.startswith("#")]
        picked = listed[:: max(1, len(listed) // args.imagenette)][: args.imagenette]
        wanted = {n: args.out / "imagenette" / Path(n).parent.name / Path(n).name for n in picked}
        jobs += members(args.data / "imagenette-train.tar", wanted)
    print(f"making {len(jobs)} photos of {width}x{height} in {args.out}", flush=True)
    with ThreadPoolExecutor(args.workers) as pool:
        made = pool.map(lambda j: convert(j[0], j[1], width, height, args.quality, args.noise), jobs)
        for i, _ in enumerate(made, 1):
            if i % 200 == 0:
                print(f"  {i}/{len(jobs)}", flush=True)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"done: {total / 2**20:.0f} MB under {args.out}")


if __name__ == "__main__":
    main()
