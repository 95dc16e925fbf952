import pytest

from cofe_curation import CurationConfig


def test_from_dict_overrides_and_presets():
    cfg = CurationConfig.from_dict({"preset": "tiny", "faces": {"min_face_px": 32}})
    assert cfg.faces.min_face_px == 32
    assert cfg.write.shard_max_clips == 2  # from the tiny preset
    assert CurationConfig().faces.min_face_px == 48  # defaults untouched
    assert CurationConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"face": {}}, "unknown curation config section 'face'"),
        ({"faces": {"min_face": 3}}, "unknown key faces.min_face"),
        ({"faces": 3}, "must be a mapping"),
        ({"preset": "huge"}, "unknown curation preset 'huge'"),
    ],
)
def test_bad_config_names_the_key(data, match):
    with pytest.raises(ValueError, match=match):
        CurationConfig.from_dict(data)
