"""Folders the project keeps under the shared /var/tmp (the local state folder,
the runtime venv's folder) are ours with mode 0700, or refused
(salespulse/private_dir.py, docs/security.md#local-state-folder): another
local user cannot pre-create them to read or plant files."""

from __future__ import annotations

import grp
import os
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
import pytest

from salespulse.private_dir import NotPrivate, private_dir

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def place():
    """A fresh name under /var/tmp, as the real folders have; removed afterwards."""
    path = Path(f"/var/tmp/salespulse-private-test-{uuid.uuid4().hex[:8]}")
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def test_a_missing_folder_is_created_private(place):
    assert private_dir(place) == place
    assert stat.S_ISDIR(os.lstat(place).st_mode) and mode_of(place) == 0o700
    assert os.lstat(place).st_uid == os.geteuid()


def test_our_folder_readable_by_others_is_tightened(place):
    place.mkdir()
    place.chmod(0o755)  # what earlier versions created
    private_dir(place)
    assert mode_of(place) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_a_folder_others_can_write_to_is_refused(place, mode):
    place.mkdir()
    place.chmod(mode)
    with pytest.raises(NotPrivate, match=rf"{place} has mode {mode:04o}.*others can write"):
        private_dir(place)
    assert mode_of(place) == mode  # left as found


def test_a_folder_of_another_user_or_a_symlink_is_refused(place, tmp_path):
    place.mkdir(mode=0o700)
    os.chown(place, NOBODY, NOBODY)
    with pytest.raises(NotPrivate, match=rf"{place} is owned by uid {NOBODY}, not by this user"):
        private_dir(place)
    os.rmdir(place)
    place.symlink_to(tmp_path)
    with pytest.raises(NotPrivate, match="symlink"):
        private_dir(place)


def run_stack_up(state: Path) -> subprocess.CompletedProcess:
    """``salespulse stack up`` with ``state`` as its folder; killed (with whatever it started) if it runs on."""
    env = {**os.environ, "SALESPULSE_STATE_DIR": str(state), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "salespulse.cli", "stack", "up"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def make_untrusted(place, how: str) -> None:
    """A folder another local user could have prepared: open to all, or not ours."""
    place.mkdir()
    if how == "mode 0777":
        place.chmod(0o777)
    else:
        place.chmod(0o700)
        os.chown(place, NOBODY, NOBODY)


@pytest.mark.parametrize("how", ["mode 0777", "another owner"])
def test_the_stack_refuses_to_start_in_a_folder_it_cannot_trust(place, how):
    make_untrusted(place, how)
    result = run_stack_up(place)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"state folder {place}" in result.stderr and "SALESPULSE_STATE_DIR" in result.stderr
    assert list(place.iterdir()) == []  # nothing written, nothing started


@pytest.mark.parametrize("how", ["mode 0777", "another owner"])
def test_the_runtime_venv_refuses_a_folder_it_cannot_trust(place, how):
    make_untrusted(place, how)
    result = subprocess.run(["bash", str(REPO / "scripts" / "runtime-venv.sh")], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "RUNTIME_VENV_ROOT": str(place)})
    assert result.returncode != 0 and result.stdout == ""
    assert f"runtime-venv: runtime venv folder {place}" in result.stderr and "RUNTIME_VENV_ROOT" in result.stderr
    assert list(place.iterdir()) == []


def test_the_embedded_postgres_folder_is_private_and_reachable_by_postgres(postgres, state_dir):
    """The session's PostgreSQL started from ``state_dir``: as root, the folder is
    0710 with group postgres (PostgreSQL runs as that user), else 0700."""
    st = os.lstat(state_dir)
    assert st.st_uid == os.geteuid()
    if os.geteuid() == 0:
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o710, grp.getgrnam("postgres").gr_gid)
    else:
        assert stat.S_IMODE(st.st_mode) == 0o700
    psycopg2.connect(postgres.admin_url).close()  # and the cluster inside it serves
