"""End-to-end training runs of the `tiny` preset: exact resume after SIGKILL, DDP equals one process,
JSON progress, loadable checkpoints, samples and TensorBoard files."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from land_core.checkpoint import load_checkpoint

from train_helpers import ROOT, SUBPROCESS_ENV, TINY, json_lines, land_train_cmd, run_land_train

WEIGHT_FILES = ("vae.safetensors", "unet.safetensors", "unet_ema.safetensors", "training_state.safetensors")


@pytest.fixture(scope="module")
def reference_run(phantom_data, tmp_path_factory) -> tuple[Path, list[dict]]:
    """`land train all` (VAE 4 steps, LDM 4 steps, checkpoints every 2) without interruption."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run_land_train("all", *TINY, "--data", str(phantom_data), "--out", str(out), "--json-progress")
    assert result.returncode == 0, result.stderr
    return out, json_lines(result.stdout)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in WEIGHT_FILES:
        if (folder / name).exists():
            out.update({f"{name}:{k}": v for k, v in load_file(str(folder / name)).items()})
    return out


def _run_until(args: list[str], stage: str) -> int:
    """Start `land train`, SIGKILL it as soon as it reports its first checkpoint of ``stage``."""
    proc = subprocess.Popen(land_train_cmd(*args), cwd=ROOT, env=SUBPROCESS_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    killed_at = -1
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "checkpoint" and event["stage"] == stage:
            proc.send_signal(signal.SIGKILL)
            killed_at = event["step"]
            break
    proc.wait(timeout=60)
    assert killed_at > 0, "the run ended before writing a checkpoint"
    assert proc.returncode == -signal.SIGKILL
    return killed_at


def test_resume_after_sigkill_ends_with_the_same_weights(reference_run, phantom_data, tmp_path):
    ref, _ = reference_run
    out = tmp_path / "run"
    args = ["all", *TINY, "--data", str(phantom_data), "--out", str(out), "--json-progress"]
    # killed in the VAE stage, right after its first checkpoint
    assert _run_until(args, "vae") == 2
    last = json.loads((out / "vae" / "last").read_text())
    assert last["step"] < 4 and not last["done"]
    assert not (out / "ldm" / "last").exists()
    # a half-written checkpoint of a killed run is ignored and cleaned up
    junk = out / "vae" / "checkpoints" / ".step_000004.partial-dead"
    junk.mkdir()
    (junk / "vae.safetensors").write_bytes(b"truncated")
    # resumed, then killed again in the LDM stage
    assert _run_until([*args, "--resume"], "ldm") == 2
    assert not junk.exists()
    assert json.loads((out / "vae" / "last").read_text())["done"]
    assert json.loads((out / "ldm" / "last").read_text())["step"] < 4
    # resumed to the end
    result = run_land_train(*args, "--resume")
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stdout)
    assert events[-1]["event"] == "done"
    assert any(e["event"] == "start" and e["stage"] == "ldm" and e["resumed"] and e["step"] == 2 for e in events)

    for stage, step in (("vae", 4), ("ldm", 4)):
        a = _tensors(ref / stage / "checkpoints" / f"step_{step:06d}")
        b = _tensors(out / stage / "checkpoints" / f"step_{step:06d}")
        assert a.keys() == b.keys() and len(a) > 20
        assert any(k.startswith("training_state.safetensors:optim.") for k in a)
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{stage}: {len(different)} tensors differ, e.g. {different[:3]}"
        sa = json.loads((ref / stage / "checkpoints" / f"step_{step:06d}" / "training_state.json").read_text())
        sb = json.loads((out / stage / "checkpoints" / f"step_{step:06d}" / "training_state.json").read_text())
        for key in ("optimizers", "schedulers", "rng", "data_order", "best", "extra"):
            assert sa[key] == sb[key], key


def test_json_progress_events(reference_run):
    out, events = reference_run
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    steps = [e for e in events if e["event"] == "step"]
    assert [(e["stage"], e["step"]) for e in steps] == [("vae", i) for i in range(1, 5)] + [("ldm", i) for i in range(1, 5)]
    for e in steps:
        assert e["total"] == 4 and isinstance(e["steps_per_s"], float)
        assert {"loss", "l1", "kl"} <= set(e["losses"]) if e["stage"] == "vae" else {"loss", "mse"} <= set(e["losses"])
        assert all(isinstance(v, float) for v in e["losses"].values())
    assert steps[-1]["eta_s"] == 0.0
    assert "adv_g" not in steps[1]["losses"] and "adv_g" in steps[2]["losses"]  # adversarial after 2 steps
    checkpoints = [e for e in events if e["event"] == "checkpoint"]
    assert [(e["stage"], e["step"]) for e in checkpoints] == [("vae", 2), ("vae", 4), ("ldm", 2), ("ldm", 4)]
    assert all(Path(e["path"]).is_dir() for e in checkpoints)
    samples = [e for e in events if e["event"] == "sample"]
    assert {e["stage"] for e in samples} == {"vae", "ldm"}
    assert all(Path(e["path"]).is_file() and Path(e["png"]).read_bytes()[:4] == b"\x89PNG" for e in samples)
    assert events[-1]["checkpoint"] == str(out / "ldm" / "checkpoints" / "step_000004")


def test_run_folder_and_checkpoints_load(reference_run):
    out, _ = reference_run
    for stage in ("vae", "ldm"):
        run = out / stage
        for name in ("config.json", "train.log", "last", "best"):
            assert (run / name).exists(), name
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
        last = json.loads((run / "last").read_text())
        assert last == {**last, "stage": stage, "step": 4, "done": True, "checkpoint": "checkpoints/step_000004"}
    vae = load_checkpoint(out / "vae" / "checkpoints" / "step_000004")
    assert vae.unet is None and vae.metadata.vae_steps == 4
    ldm = load_checkpoint(out / "ldm" / "best")
    assert ldm.unet is not None and ldm.unet_ema is not None and ldm.metadata.unet_steps in (2, 4)
    final = load_checkpoint(out / "ldm" / "checkpoints" / "step_000004")
    state = json.loads((out / "ldm" / "checkpoints" / "step_000004" / "training_state.json").read_text())
    assert final.config.latent_scale_factor == pytest.approx(state["extra"]["latent_scale_factor"])
    assert 0.2 < final.config.latent_scale_factor < 5.0
    # the model's grid is the data's (32^3 phantoms at 8 mm), not LAND's 256^3 at 1 mm
    assert (final.config.image_size, final.config.image_spacing) == (32, 8.0)
    assert final.metadata.training_data["spacings_mm"] == ["8x8x8"]
    # the LDM was trained on the VAE just trained: same weights
    trained_vae = load_file(str(out / "vae" / "checkpoints" / "step_000004" / "vae.safetensors"))
    assert all(torch.equal(v, final.vae.state_dict()[k]) for k, v in trained_vae.items())
    # the EMA differs from the raw weights but stays close to them
    diffs = [(a - b).abs().max().item() for a, b in zip(final.unet.parameters(), final.unet_ema.parameters())]
    assert max(diffs) > 0
    assert "phantom" in json.dumps(final.metadata.training_data)
    assert final.metadata.reference_statistics["hu_bin_edges"][0] == -1100.0
    logged = (out / "vae" / "train.log").read_text()
    assert "discriminator feature matching" in logged


@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one(reference_run, phantom_data, tmp_path):
    ref, _ = reference_run
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "land_core.cli", "train", "all", *TINY, "--data", str(phantom_data), "--out", str(out),
           "--json-progress"]
    result = subprocess.run(cmd, cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = json_lines(result.stdout)  # rank 0 alone prints
    assert [e["world_size"] for e in events if e["event"] == "start"] == [2, 2]
    assert sum(e["event"] == "done" for e in events) == 1
    for stage in ("vae", "ldm"):
        a = _tensors(ref / stage / "checkpoints" / "step_000004")
        b = _tensors(out / stage / "checkpoints" / "step_000004")
        weights = [k for k in a if not k.startswith("training_state.safetensors:rng.")]
        assert len(weights) > 20 and set(weights) <= set(b)
        worst = max((a[k].double() - b[k].double()).abs().max().item() for k in weights if a[k].is_floating_point())
        assert worst < 1e-4, f"{stage}: largest difference {worst}"
        for k in weights:
            assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-4, atol=1e-5), k
