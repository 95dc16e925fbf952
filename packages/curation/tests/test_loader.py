"""The loader that cofe curate runs: largest inputs first, one InputResult per input, errors as results."""

import tarfile

from cofe_curation import CurationConfig, InputItem, input_loader, largest_first


def test_largest_first_reads_files_and_shard_members(tmp_path):
    (tmp_path / "small.mp4").write_bytes(b"x" * 10)
    (tmp_path / "big.mp4").write_bytes(b"x" * 1000)
    (tmp_path / "mid.mp4").write_bytes(b"x" * 100)
    shard = tmp_path / "raw.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(tmp_path / "mid.mp4", arcname="a.mp4")
        tar.add(tmp_path / "big.mp4", arcname="b.mp4")
    items = [
        InputItem(str(tmp_path / "small.mp4")),
        InputItem(f"{shard}::a.mp4"),
        InputItem(str(tmp_path / "missing.mp4")),
        InputItem(f"{shard}::b.mp4"),
        InputItem(str(tmp_path / "big.mp4")),
    ]
    order = [item.source.rsplit("/", 1)[-1] for item in largest_first(items)]
    assert order == ["raw.tar::b.mp4", "big.mp4", "raw.tar::a.mp4", "small.mp4", "missing.mp4"]


def test_loader_gives_one_result_per_input_and_errors_as_results(tmp_path, bad_inputs):
    items = [InputItem(str(tmp_path / "missing.mp4")), InputItem(str(bad_inputs["corrupt"]))]
    results = list(input_loader(items, CurationConfig.from_name("tiny"), workers=0))
    assert [r.decision for r in results] == ["error", "error"]
    assert "file not found" in results[0].reason and "not a readable media file" in results[1].reason
