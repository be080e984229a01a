"""The `land` command as a person uses it: exit codes and messages, not tracebacks."""

import json
import subprocess
import sys

import numpy as np

from land_core.cli import main
from land_core.io import write_volume
from land_core.volume import Volume


def test_help_lists_the_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for command in ("phantom", "manifest", "info"):
        assert command in out


def test_info_prints_geometry(tmp_path, capsys):
    path = write_volume(Volume(np.full((4, 5, 6), -1000, np.int16), (0.5, 0.5, 2.0), (1, 2, 3)), tmp_path / "a.nrrd")
    assert main(["info", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size_xyz"] == [6, 5, 4] and info["spacing"] == [0.5, 0.5, 2.0] and info["min"] == -1000


def test_bad_input_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    result = subprocess.run([sys.executable, "-m", "land_core.cli", "info", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"land: error: {bad}:" in result.stderr


def test_phantom_command_options(tmp_path):
    out = tmp_path / "p"
    assert main(["phantom", "--out", str(out), "--n", "1", "--size", "48", "--spacing", "5",
                 "--nodules", "2", "--textures", "1,3", "--diameter", "12,14", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    case = manifest["cases"][0]
    assert case["n_nodules"] == 2 and set(case["textures"]) <= {1, 3}


def test_phantom_bad_option_is_an_error(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "p"), "--textures", "7"]) == 2
    assert "textures must be" in capsys.readouterr().err
