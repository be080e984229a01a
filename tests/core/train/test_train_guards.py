"""What stops a run, and how: NaN losses (the last good checkpoint stays), bad datasets (every bad
case named before training starts), runs that would overwrite an earlier one."""

from __future__ import annotations

import json
import shutil

import pytest

from land_core.checkpoint import load_checkpoint
from land_core.cli import main

from train_helpers import json_lines


def _train(*args: str) -> int:
    return main(["train", *args])


def test_nan_guard_stops_with_a_message_and_keeps_the_last_good_checkpoint(phantom_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["vae", "--config", "tiny", "--data", str(phantom_data), "--out", str(out), "--steps", "4",
            "--json-progress"]
    assert _train(*args, "--set", "run.debug_nan_step=3") == 2
    captured = capsys.readouterr()
    events = json_lines(captured.out)
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2]
    error = events[-1]
    assert error["event"] == "error"
    assert "diverged at step 3" in error["message"] and "step_000002" in error["message"]
    assert "land: error: vae training diverged at step 3: loss = nan" in captured.err
    assert json.loads((out / "last").read_text())["step"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002"]
    assert load_checkpoint(out / "checkpoints" / "step_000002").metadata.vae_steps == 2
    # the fix: resume without the fault; the run continues from step 2
    assert _train(*args, "--resume", "--set", "run.debug_nan_step=0") == 0
    events = json_lines(capsys.readouterr().out)
    assert events[0] == {**events[0], "event": "start", "step": 2, "resumed": True}
    assert events[-1]["event"] == "done" and events[-1]["step"] == 4


def test_an_existing_run_is_not_overwritten(phantom_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train("vae", "--config", "tiny", "--data", str(phantom_data), "--out", str(out), "--steps", "1",
                  "--quiet") == 0
    assert _train("vae", "--config", "tiny", "--data", str(phantom_data), "--out", str(out), "--steps", "1") == 2
    assert "already holds a training run; pass --resume" in capsys.readouterr().err


def _expect_report(capsys, *args: str) -> str:
    assert _train(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("land: error: ")
    return err


def test_empty_and_missing_datasets_are_reported(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text(json.dumps({"format": "land-dataset/1", "cases": []}))
    out = tmp_path / "run"
    err = _expect_report(capsys, "vae", "--config", "tiny", "--data", str(empty), "--out", str(out))
    assert "the dataset is empty" in err
    err = _expect_report(capsys, "all", "--config", "tiny", "--data", str(tmp_path / "nothing"), "--out", str(out))
    assert "no such manifest file" in err
    assert not out.exists()  # nothing was written before the data was checked


def test_every_broken_case_is_named_before_training(phantom_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(phantom_data, data)
    cases = sorted(p.name for p in data.iterdir() if p.is_dir())
    (data / cases[0] / "lungs.nii.gz").unlink()
    (data / cases[1] / "nodules.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "run"
    err = _expect_report(capsys, "all", "--config", "tiny", "--data", str(data), "--out", str(out))
    assert f"case '{cases[0]}': lungs file missing" in err
    assert f"case '{cases[1]}'" in err and "nodules" in err
    assert cases[2] not in err
    assert not out.exists()


def test_volumes_too_small_for_the_patch_or_the_unet_are_named(phantom_data, tmp_path, capsys):
    out = tmp_path / "run"
    err = _expect_report(capsys, "vae", "--config", "tiny", "--data", str(phantom_data), "--out", str(out),
                         "--set", "vae.patch_size=48")
    assert err.count("32x32x32 voxels, smaller than the VAE patches of 48^3") == 3
    # `all` checks the LDM's needs too, before the VAE trains: a 5-level U-Net needs 64^3 multiples
    err = _expect_report(capsys, "all", "--config", "tiny", "--data", str(phantom_data), "--out", str(out),
                         "--set", "ldm.model.channel_multipliers=1,1,2,2,2", "ldm.model.attention_levels=0,0,1,0,0")
    assert err.count("needs sizes divisible by 64") == 3
    assert not out.exists()


def test_ldm_alone_needs_a_vae(phantom_data, tmp_path, capsys):
    err = _expect_report(capsys, "ldm", "--config", "tiny", "--data", str(phantom_data), "--out", str(tmp_path / "r"))
    assert "needs the VAE" in err
    err = _expect_report(capsys, "ldm", "--config", "tiny", "--data", str(phantom_data), "--out", str(tmp_path / "r"),
                         "--vae", str(tmp_path))
    assert "neither a checkpoint folder" in err


def test_a_stop_request_ends_with_a_checkpoint_and_resume_finishes(phantom_data, tmp_path):
    from land_core.train.config import train_preset
    from land_core.train.run import train

    config = train_preset("tiny")  # 6 VAE steps, checkpoints every 2
    events: list[dict] = []
    steps_seen = lambda: sum(e["event"] == "step" for e in events)  # noqa: E731
    (result,) = train("vae", config, phantom_data, tmp_path / "run", emit=events.append,
                      should_stop=lambda: steps_seen() >= 2)  # asked during step 3 (as SIGTERM would)
    assert result.stopped and result.step == 3
    assert result.checkpoint == tmp_path / "run" / "checkpoints" / "step_000003"
    assert events[-1]["event"] == "stopped"
    assert not json.loads((tmp_path / "run" / "last").read_text())["done"]
    (result,) = train("vae", config, phantom_data, tmp_path / "run", resume=True, emit=events.append)
    assert not result.stopped and result.step == 6
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
