"""Ed25519 key files: 0600, never overwritten, refused when others can read them."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from depin import keys
from depin.errors import InputError, KeyFileError, NotFoundError


def test_a_new_key_is_private_to_its_owner(tmp_path: Path) -> None:
    info = keys.generate("alice", tmp_path)
    assert stat.S_IMODE(info.path.stat().st_mode) == 0o600
    assert (tmp_path / "alice.pub").read_text().startswith("ed25519 ")


def test_the_key_id_is_derived_from_the_public_key(tmp_path: Path) -> None:
    info = keys.generate("alice", tmp_path)
    public = keys.load_public("alice", tmp_path)
    assert keys.key_id(public) == info.key_id
    assert len(info.key_id) == 16
    assert keys.key_id(keys.load_private("alice", tmp_path).public_key()) == info.key_id


def test_an_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    keys.generate("alice", tmp_path)
    before = (tmp_path / "alice.key").read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        keys.generate("alice", tmp_path)
    assert (tmp_path / "alice.key").read_bytes() == before


def test_a_key_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    info = keys.generate("alice", tmp_path)
    info.path.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"chmod 600 .*alice\.key"):
        keys.load_private("alice", tmp_path)


def test_public_keys_load_from_a_name_a_file_or_base64(tmp_path: Path) -> None:
    info = keys.generate("alice", tmp_path)
    by_name = keys.load_public("alice", tmp_path)
    by_file = keys.load_public(str(tmp_path / "alice.pub"), tmp_path)
    by_b64 = keys.load_public(info.public_key, tmp_path)
    assert {keys.key_id(k) for k in (by_name, by_file, by_b64)} == {info.key_id}


def test_unknown_keys_and_bad_names_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="depin keys new bob"):
        keys.load_private("bob", tmp_path)
    with pytest.raises(NotFoundError, match="no key 'bob'"):
        keys.load_public("bob", tmp_path)
    with pytest.raises(InputError, match="bad key name"):
        keys.generate("../escape", tmp_path)


def test_key_listings_hold_no_private_material(tmp_path: Path) -> None:
    keys.generate("alice", tmp_path)
    secret = (tmp_path / "alice.key").read_text()
    body = "".join(secret.splitlines()[1:-1])
    listed = keys.list_keys(tmp_path)
    assert [k.name for k in listed] == ["alice"]
    assert body not in repr(listed)


def test_a_failed_generate_leaves_no_key_file_behind(tmp_path: Path) -> None:
    (tmp_path / "alice.pub").mkdir()  # the public half cannot be written
    with pytest.raises(KeyFileError, match=r"alice\.pub"):
        keys.generate("alice", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.pub"]


def test_a_name_whose_generate_failed_can_be_generated_again(tmp_path: Path) -> None:
    (tmp_path / "alice.pub").mkdir()
    with pytest.raises(KeyFileError):
        keys.generate("alice", tmp_path)
    (tmp_path / "alice.pub").rmdir()
    info = keys.generate("alice", tmp_path)
    assert keys.key_id(keys.load_public("alice", tmp_path)) == info.key_id


def test_an_existing_public_key_is_never_overwritten(tmp_path: Path) -> None:
    other = keys.generate("bob", tmp_path)
    (tmp_path / "bob.pub").rename(tmp_path / "alice.pub")
    with pytest.raises(KeyFileError, match="already exists"):
        keys.generate("alice", tmp_path)
    assert keys.key_id(keys.load_public("alice", tmp_path)) == other.key_id
    assert not (tmp_path / "alice.key").exists()


def test_an_existing_keys_directory_is_made_private(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o755)
    keys_dir.chmod(0o755)  # whatever the umask left
    keys.generate("alice", keys_dir)
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700


def test_a_private_key_reached_through_a_symlink_is_refused(tmp_path: Path) -> None:
    keys.generate("alice", tmp_path / "real")
    (tmp_path / "alice.key").symlink_to(tmp_path / "real" / "alice.key")
    with pytest.raises(KeyFileError, match="symbolic link"):
        keys.load_private("alice", tmp_path)


def test_the_mode_checked_is_that_of_the_file_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process swaps in a world-readable key just before the file is opened:
    # a check by name (stat) followed by a read would pass the one and read the other.
    keys.generate("alice", tmp_path)
    keys.generate("mallory", tmp_path)
    (tmp_path / "mallory.key").chmod(0o644)
    target = tmp_path / "alice.key"

    def swapping(real_open: Callable[..., Any]) -> Callable[..., Any]:
        def opener(file: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, str | os.PathLike) and Path(file) == target:
                os.replace(tmp_path / "mallory.key", target)
            return real_open(file, *args, **kwargs)

        return opener

    monkeypatch.setattr(io, "open", swapping(io.open))
    monkeypatch.setattr(os, "open", swapping(os.open))
    with pytest.raises(KeyFileError, match="chmod 600"):
        keys.load_private("alice", tmp_path)
