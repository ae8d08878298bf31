"""Folders of ours under a shared, world-writable place (``/var/tmp``).

The local state folder (``SALESPULSE_STATE_DIR``, default
``/var/tmp/salespulse``: PostgreSQL's data, the broker's rotation files,
Dagster's home with a database password, supervisord's socket) has a
predictable name, so another local user could create it first and read what
we write or plant what we read. :func:`private_dir` is the one check, run
before the folder is used:

* missing: created with mode 0700;
* a symlink, not a folder, or owned by another user: refused (:class:`NotPrivate`);
* writable by its group or by others (0777, 0775, ...): refused: someone else
  may already have put files in it;
* otherwise (ours, at most readable or traversable by others, e.g. the 0755
  earlier versions created): tightened to 0700.

One exception, as root: the embedded PostgreSQL runs as the ``postgres`` user
and must reach its cluster inside the folder, so :func:`let_group_traverse`
gives that user's group traverse-only access (0710, group ``postgres``), and
:func:`private_dir` keeps it. ``scripts/runtime-venv.sh`` applies the same
rule to the runtime venv's folder.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

PRIVATE_MODE = 0o700
TRAVERSE_GROUP = "postgres"  # the embedded PostgreSQL's user, when we run as root


class NotPrivate(RuntimeError):
    """A folder of ours that another user created or can write to."""


def _traverse_gid() -> int | None:
    """The group allowed to traverse (root only, if that group exists)."""
    if os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam(TRAVERSE_GROUP).gr_gid
    except KeyError:
        return None


def private_dir(path: Path, what: str = "state folder", setting: str = "SALESPULSE_STATE_DIR") -> Path:
    """Create ``path`` (mode 0700) or check that it is ours and private, as the
    module says; raises :class:`NotPrivate` naming the path, what is wrong and
    the fix (``setting`` names the variable that moves it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, PRIVATE_MODE)
    except FileExistsError:
        pass
    fix = f"remove it (after checking what is in it) or set {setting} to a folder of your own"
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise NotPrivate(f"{what} {path} is not a folder but a {'symlink' if stat.S_ISLNK(st.st_mode) else 'file'}: "
                         f"refusing to use it; {fix}")
    if st.st_uid != os.geteuid():
        raise NotPrivate(f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}): "
                         f"another user may read or plant files in it; refusing to use it; {fix}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise NotPrivate(f"{what} {path} has mode {mode:04o}: others can write to it, so its contents cannot be "
                         f"trusted; refusing to use it (it must be 0700); {fix}")
    keep = 0o010 if st.st_gid == _traverse_gid() else 0
    if mode != PRIVATE_MODE | keep:
        os.chmod(path, PRIVATE_MODE | keep)
    return path


def let_group_traverse(path: Path) -> None:
    """As root: let the ``postgres`` group traverse ``path`` (group ``postgres``,
    mode 0710), unless everybody may already; otherwise nothing to do."""
    gid = _traverse_gid()
    st = os.lstat(path)
    if gid is None or st.st_mode & 0o001:
        return
    os.chown(path, -1, gid)
    os.chmod(path, stat.S_IMODE(st.st_mode) | 0o010)
