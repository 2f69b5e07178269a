"""Paths that cannot be written: read-only places and a full disk are one line each, and nothing already saved is lost.

Read-only places are small tmpfs mounts remounted read-only where the tests run as root (chmod does not stop root),
and folders without write permission elsewhere; the full disk is a tmpfs of a few checkpoints' size, so that test
needs root and skips without it.
"""

import json
import os
import subprocess

import pytest

from mixmatch import runfolder
from mixmatch.cli import main
from mixmatch.training import checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["--steps", "4", "--batch-size", "16", "--amp", "off", "--no-progress"]


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, size) -> a fresh tmpfs of `size` at tmp_path/name (skips where mounting is not allowed)."""
    points = []

    def mount(name: str, size: str = "4m"):
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here (root only): {done.stderr.decode().strip()}")
        points.append(point)
        return point

    yield mount
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def read_only(tmp_path):
    """make(folder) -> `folder` made read-only: a tmpfs remounted read-only as root, a chmod 555 folder otherwise."""
    points, folders = [], []

    def make(folder):
        if os.geteuid() == 0:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
            if done.returncode:
                pytest.skip(f"running as root, where only a read-only mount stops writes, and mount failed: "
                            f"{done.stderr.decode().strip()}")
            points.append(folder)
            return folder

        folder.chmod(0o555)
        folders.append(folder)
        return folder

    def seal(folder):  # a tmpfs that already holds files, made read-only
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    make.seal = seal
    yield make
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], check=False)
    for folder in folders:
        folder.chmod(0o755)


def test_train_into_a_read_only_place_is_one_line_before_any_work(tmp_path, read_only, cli_error):
    place = tmp_path / "ro"
    place.mkdir()
    read_only(place)
    if os.geteuid() == 0:
        read_only.seal(place)
    line = cli_error("train", *RUN, "--out", str(place / "run"))
    cause = "the file system is read-only" if os.geteuid() == 0 else "permission denied"
    assert line == f"mixmatch: error: cannot write the run folder {place / 'run'}: {cause}; nothing was written"
    line = cli_error("compare", *RUN, "--out", str(place / "grid"))
    assert line.startswith(f"mixmatch: error: cannot write the grid folder {place / 'grid'}: {cause}")


@pytest.fixture
def finished_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *RUN, "--out", str(run)]) == 0
    capsys.readouterr()
    return run


def test_export_evaluate_and_predict_into_read_only_places_are_one_line(tmp_path, tmpfs, finished_run, cli_error,
                                                                        capsys):
    if os.geteuid() != 0:
        pytest.skip("a read-only run folder needs a tmpfs remounted read-only (root)")
    sealed = tmpfs("sealed")
    subprocess.run(["cp", "-r", str(finished_run), str(sealed / "run")], check=True)
    assert main(["export", str(finished_run)]) == 0  # a model to evaluate, outside the read-only place
    capsys.readouterr()
    subprocess.run(["mount", "-o", "remount,ro", str(sealed)], check=True)
    before = sorted(p.name for p in (sealed / "run").rglob("*"))

    line = cli_error("export", str(sealed / "run"))
    assert line == (f"mixmatch: error: cannot write the folder of the exported model {sealed / 'run'}: the file "
                    "system is read-only; nothing was written (export --out FILE writes it elsewhere)")
    line = cli_error("evaluate", "--model", str(finished_run), "--out", str(sealed / "confusion.png"))
    assert line.startswith(f"mixmatch: error: cannot write the folder of the confusion matrix {sealed}: the file "
                           "system is read-only")
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("L", (8, 8), 128).save(images / "a.png")
    line = cli_error("predict", "--model", str(finished_run), str(images), "--csv", str(sealed / "p.csv"))
    assert line.startswith(f"mixmatch: error: cannot write the folder of the --csv file {sealed}: the file system is "
                           "read-only")
    assert sorted(p.name for p in (sealed / "run").rglob("*")) == before


def test_a_disk_that_fills_while_a_checkpoint_is_written_is_one_line_and_keeps_the_older_ones(tmpfs, cli_error,
                                                                                            capsys):
    small = tmpfs("small", size="1000k")  # a digits checkpoint is about 380 kB: two fit, the third does not
    run = small / "run"
    args = ["train", "--steps", "60", "--rampup-steps", "10", "--batch-size", "16", "--checkpoint-every", "10"]
    args += ["--keep-checkpoints", "9"]
    line = cli_error(*args, "--amp", "off", "--no-progress", "--out", str(run))
    kept = runfolder.checkpoints(run)
    steps = [int(p.stem.removeprefix("step-")) for p in kept]
    assert steps == [10, 20]
    assert line.startswith(f"mixmatch: error: cannot write {run / 'checkpoints' / 'step-00000030.pt'}: no space left "
                           "on the device; the run stopped at step 30; its checkpoints at steps 10, 20 are kept")
    assert line.endswith(f"continue with mixmatch train --resume {run}")
    for path in kept:
        assert checkpoint.safe_load(path)["step"] in (10, 20)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], "no temporary file is left"

    subprocess.run(["mount", "-o", "remount,size=8m", str(small)], check=True)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 60


def test_a_folder_where_a_file_must_go_and_a_missing_run_are_one_line_before_any_work(tmp_path, finished_run,
                                                                                     cli_error, capsys):
    assert main(["export", str(finished_run)]) == 0
    capsys.readouterr()
    (tmp_path / "cm").mkdir()
    line = cli_error("evaluate", "--model", str(finished_run), "--out", str(tmp_path / "cm"))
    assert line == (f"mixmatch: error: cannot write the confusion matrix {tmp_path / 'cm'}: a folder stands where the "
                    "file must be; nothing was written")
    assert cli_error("export", str(tmp_path / "nope")) == (
        f"mixmatch: error: {tmp_path / 'nope'} is not a folder (a run folder holds its checkpoints)")


def test_written_files_get_the_usual_permissions(finished_run, capsys):
    assert main(["export", str(finished_run)]) == 0
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("model.safetensors", "model.json", "config.json", "summary.json"):
        assert (finished_run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
