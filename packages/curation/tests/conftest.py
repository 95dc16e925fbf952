"""Shared fixtures: clips composed from real face photos, the awkward inputs, and the real webcam clip."""

from __future__ import annotations

import pytest

from cofe_curation import CurationConfig, Curator
from cofe_curation.synth import compose, real_clip, tone, write_bad_inputs, write_clip

KINDS = (
    "turning",
    "turning_frontal",
    "two_faces",
    "swap",
    "no_face",
    "tiny",
    "profile_and_back",
    "static_profile",
    "switch",
)


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict:
    """Composed clips, 3 s at 16 fps with a tone track, one per kind in ``KINDS``: name -> path."""
    folder = tmp_path_factory.mktemp("composed")
    return {kind: write_clip(folder / f"{kind}.mp4", compose(kind), 16.0, tone(3.0)) for kind in KINDS}


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> dict:
    """The awkward inputs of :func:`cofe_curation.synth.write_bad_inputs`: name -> path."""
    return write_bad_inputs(tmp_path_factory.mktemp("bad"), base=compose("turning"))


@pytest.fixture(scope="session")
def movie_hello():
    """The real speaking webcam clip ``movie-hello.mp4`` (Debian forensics-samples-files), or skip."""
    path = real_clip()
    if path is None:
        pytest.skip("movie-hello.mp4 unavailable: 'apt-get download forensics-samples-files' failed (offline?)")
    return path


@pytest.fixture(scope="session")
def curator() -> Curator:
    return Curator(CurationConfig())
