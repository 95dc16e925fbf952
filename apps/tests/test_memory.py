"""Sampling memory plans (`cofe_apps.memory`): the README's tables are what the module computes now, the real presets
fit the cards they are said to, offloading lowers the peak, and the byte counting and its shortcuts are exact.

The plans are measured once per module (`tables`); every real-size number below reads the same per-process caches.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cofe_apps import memory

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Sampling memory per offload mode"


@pytest.fixture(scope="module")
def tables() -> str:
    return memory.markdown_tables()  # measures every plan the tests read (cached per process)


def test_readme_holds_the_current_tables(tables):
    text = README.read_text()
    assert SECTION in text, f"{README} has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    if tables not in section:
        stale = [line for line in tables.splitlines() if line and line not in section]
        pytest.fail(
            f"the tables in {README.name}'s {SECTION!r} are not what cofe_apps.memory computes now: run "
            f"`python apps/benchmarks/memory_table.py` and paste its tables there. First lines that differ:\n"
            + "\n".join(stale[:5])
        )


def test_wan21_i2v_14b_fits_80gb_with_model_offload_and_24gb_with_blocks(tables):
    # `fits` keeps the peak + 10% + 1 GiB under the card's bytes: 80 GB = 74.5 GiB, 24 GB = 22.4 GiB.
    model = memory.plan("wan2.1-i2v-14b", "model")
    blocks = memory.plan("wan2.1-i2v-14b", "blocks")
    assert model.fits(80), f"offload='model' peaks at {model.peak / memory.GiB:.1f} GiB ({model.peak_phase})"
    assert blocks.fits(24), f"offload='blocks' peaks at {blocks.peak / memory.GiB:.1f} GiB ({blocks.peak_phase})"
    assert not model.fits(24)  # the 36.7 GiB bf16 DiT alone outgrows a 24 GB card


@pytest.mark.parametrize("quantize", memory.TABLE_QUANTIZE)
@pytest.mark.parametrize("preset", memory.PRESETS)
def test_offloading_lowers_the_peak(tables, preset, quantize):
    none, model, blocks = (memory.plan(preset, mode, quantize=quantize) for mode in memory.OFFLOAD_MODES)
    assert none.phase("dit").peak > model.phase("dit").peak > blocks.phase("dit").peak
    # The run's peak: strictly lower with each mode only while the DiT phase is the largest; where umT5 or the
    # VAE decode is (the 1.3B and 5B with offloading), streaming the DiT's blocks cannot lower it further.
    assert none.peak > model.peak >= blocks.peak
    if model.peak_phase != "dit":
        assert blocks.peak == model.peak


def test_options_change_the_phases_they_should(tables):
    base = memory.plan("wan2.2-ti2v-5b", "blocks")
    tiled = memory.plan("wan2.2-ti2v-5b", "blocks", vae_tiling=True)
    batched = memory.plan("wan2.2-ti2v-5b", "blocks", batch_guidance=True)
    int8 = memory.plan("wan2.2-ti2v-5b", "blocks", quantize="int8")
    assert not base.fits(24) and tiled.fits(24)  # Wan 2.2's untiled decode at 121 x 704 x 1280 needs > 24 GB
    assert tiled.phase("vae_decode").activations < base.phase("vae_decode").activations
    assert tiled.phase("dit") == base.phase("dit")
    assert batched.phase("dit").activations > 2 * base.phase("dit").activations  # 3 passes in one batch
    assert int8.components["dit"] < 0.6 * base.components["dit"]
    assert int8.phase("text") == base.phase("text")


def test_plan_rejects_what_it_cannot_plan():
    with pytest.raises(ValueError, match="unknown preset"):
        memory.plan("wan2.1-t2v-14b", "model")
    with pytest.raises(ValueError, match="offload"):
        memory.plan("wan2.1-t2v-1.3b", "sequential")
    with pytest.raises(ValueError, match="frames must be 1 \\+ 4k"):
        memory.plan("wan2.1-t2v-1.3b", "model", frames=80)
    with pytest.raises(ValueError, match="multiple of 16"):
        memory.plan("wan2.1-t2v-1.3b", "model", height=100)


# ------------------------------------------------------------------------------------------ the byte counting


def test_live_bytes_counts_new_storages_until_freed():
    x = torch.empty(1024, device="meta")  # existed before: not counted
    with memory.measuring() as m:
        y = x * 2  # 4096 new bytes
        z = y.view(32, 32)  # a view: no new memory
        w = y + 1  # 4096 more
        assert m.live == 8192
        del y, w  # y's storage lives on in z
        assert m.live == 4096
        cpu = torch.ones(1000)  # CPU tensors are not the GPU
        del z, cpu
    assert (m.live, m.peak) == (0, 8192)


def test_attention_counts_output_and_logsumexp_not_scores():
    q = torch.empty(1, 8, 4096, 64, device="meta", dtype=torch.bfloat16)
    with memory.measuring() as m:
        out = F.scaled_dot_product_attention(q, q, q)
    assert out.shape == q.shape
    assert m.peak == q.numel() * 2 + 8 * 4096 * 4  # bf16 output + fp32 log-sum-exp; the scores would be 256 MiB


@pytest.mark.parametrize("tiled", [False, True])
def test_replay_shortcuts_give_the_bytes_of_a_full_run(monkeypatch, tiled):
    """A tiny DiT forward and a tiny Wan 2.2-style VAE decode (larger than one tile) peak at the same byte with the
    shortcuts (blocks, decoder calls and tile blending replayed; kernels' layouts reused) as with every call run."""
    from diffusers import AutoencoderKLWan

    from cofe_dit import DiT, DiTConfig

    cfg = DiTConfig.from_name("tiny", num_layers=4)
    tiny_vae = dict(
        base_dim=16, decoder_base_dim=16, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
        scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
    )  # fmt: skip
    with torch.device("meta"):
        dit = DiT(cfg).eval().requires_grad_(False)
        vae = AutoencoderKLWan(**tiny_vae).eval()
    dit.check_inputs = False
    dit.rope_tables(torch.device("meta"))  # built and kept on the first forward: build it before either run
    vae.use_tiling = tiled
    x = torch.empty(1, cfg.in_dim, 3, 8, 8, device="meta")
    t, ctx = torch.empty(1, device="meta"), torch.empty(1, cfg.text_len, cfg.text_dim, device="meta")
    z = torch.empty(1, 48, 2, 20, 20, device="meta")  # 320 x 320 px: 2 x 2 tiles of 256 px
    peaks = {}
    for replay in (True, False):
        monkeypatch.setattr(memory, "REPLAY", replay)
        memory._KERNELS.clear()
        with memory.measuring(list(dit.blocks)) as m_dit:
            dit(x, t, ctx)
        with memory.measuring([vae.decoder, (vae, "blend_v"), (vae, "blend_h")]) as m_vae:
            vae.decode(z)
        peaks[replay] = (m_dit.peak, m_vae.peak, len(m_dit.replays), len(m_vae.replays))
    assert peaks[True][:2] == peaks[False][:2]
    assert peaks[True][2] == 1 and peaks[True][3] > 0  # the shortcuts were taken
