"""Real images for the real-size model, from Debian's `opencv-doc` package (no other download).

`opencv-doc` ships ImageNet's class names (`classification_classes_ILSVRC2012.txt`), a street video
(`vtest.avi`, 795 frames of pedestrians: what a security camera sees) and OpenCV's sample photos.
`fetch()` downloads the .deb with `apt-get download` once and extracts only those files into a cache
directory; later calls return at once. Nothing here is committed to the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from edgecam.compiler.errors import CompilerError

CACHE_DIR = Path("~/.cache/edgecam/opencv-doc").expanduser()
LABELS_FILE = "classification_classes_ILSVRC2012.txt"
VIDEO_FILE = "vtest.avi"
PHOTOS_DIR = "photos"  # OpenCV's sample photos (.jpg), a calibration set disjoint from the evaluation one
_DATA = "./usr/share/doc/opencv-doc/examples/data/"
_MEMBERS = {_DATA + "dnn/" + LABELS_FILE: LABELS_FILE, _DATA + VIDEO_FILE: VIDEO_FILE}


class DataFetchError(CompilerError):
    """`apt-get download opencv-doc` or its extraction failed; the message says what to run by hand."""


def fetch(cache_dir: Path = CACHE_DIR) -> Path:
    """The cache directory holding the labels file, vtest.avi and photos/*.jpg (fetched if missing)."""
    cache_dir = Path(cache_dir)
    if (cache_dir / LABELS_FILE).is_file() and (cache_dir / VIDEO_FILE).is_file():
        return cache_dir
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataFetchError("fetching opencv-doc needs apt-get and dpkg-deb (a Debian/Ubuntu host)")
    with tempfile.TemporaryDirectory(prefix="edgecam-opencv-doc-") as tmp:
        deb = _download(Path(tmp))
        staging = Path(tmp) / "files"
        _extract(deb, staging)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():  # move into place last, so a half-done fetch is never "cached"
            target = cache_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(item), target)
    return cache_dir


def imagenet_labels(cache_dir: Path = CACHE_DIR) -> list[str]:
    """The 1,000 ImageNet class names in the order of the model's outputs."""
    lines = (fetch(cache_dir) / LABELS_FILE).read_text().splitlines()
    labels = [line.strip() for line in lines if line.strip()]
    if len(labels) != 1000:
        raise DataFetchError(f"{cache_dir / LABELS_FILE} holds {len(labels)} class names, expected 1000")
    return labels


def video_path(cache_dir: Path = CACHE_DIR) -> Path:
    return fetch(cache_dir) / VIDEO_FILE


def _download(directory: Path) -> Path:
    done = subprocess.run(
        ["apt-get", "download", "opencv-doc"], cwd=directory, capture_output=True, text=True, check=False
    )
    debs = sorted(directory.glob("opencv-doc_*.deb"))
    if done.returncode != 0 or not debs:
        raise DataFetchError(
            f"`apt-get download opencv-doc` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}; "
            "run `apt-get update` first, or place the files in the cache by hand"
        )
    return debs[0]


def _extract(deb: Path, staging: Path) -> None:
    """Unpack the wanted members of the .deb's data tarball (`dpkg-deb --fsys-tarfile` gives it)."""
    (staging / PHOTOS_DIR).mkdir(parents=True)
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None  # stdout=PIPE guarantees it
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                target = _destination(member, staging)
                source = tar.extractfile(member) if target is not None else None
                if target is not None and source is not None:
                    target.write_bytes(source.read())
    if proc.returncode != 0:
        raise DataFetchError(f"`dpkg-deb --fsys-tarfile {deb.name}` failed with exit {proc.returncode}")
    missing = [name for name in _MEMBERS.values() if not (staging / name).is_file()]
    if missing:
        raise DataFetchError(f"{deb.name} does not contain {', '.join(missing)}")


def _destination(member: tarfile.TarInfo, staging: Path) -> Path | None:
    if not member.isfile():
        return None
    if member.name in _MEMBERS:
        return staging / _MEMBERS[member.name]
    name = member.name.removeprefix(_DATA)
    if name != member.name and "/" not in name and name.endswith(".jpg"):
        return staging / PHOTOS_DIR / name
    return None
