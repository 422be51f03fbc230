"""Where ``msrf predict``, ``msrf test`` and ``msrf export`` may write, and how: the one place for
the rules that keep a user's files safe (docs/SAFETY.md).

* **Never among the inputs.** An output folder that is, or lies inside, a folder whose files are
  read as inputs is refused, and so is an output file that would replace an input file; a folder
  beside an input file is allowed (:func:`refuse_collisions`).
* **Never over a file msrf did not write.** Each output folder keeps a manifest,
  ``.msrf-manifest.jsonl``: one JSON line per file msrf wrote there (its path relative to the
  folder, its SHA-256, the command, the time). An existing file may be replaced only when its
  current content is one msrf wrote under that name (a user's file, or a user's edit of an output,
  is never replaced), and only when the run asked for it (``--overwrite``); ``--skip-existing``
  (predict) keeps such files instead, but only those written with the same settings (the model
  file's digest and every option that changes an output, recorded with each file): a rerun with
  other weights or options is refused rather than mixed with older outputs. An export's single
  file gets the manifest of its folder.
* **Never a truncated file.** Every output goes to a temporary name in its folder and is renamed
  onto its own name (:func:`msrfnet.weights.checkpoint.atomic_write`). The manifest line is appended
  just before the rename, so a file in place is always listed; an I/O error removes the temporary
  file and becomes one line naming the path and the cause (:func:`io_error`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from msrfnet.errors import MSRFError

__all__ = [
    "MANIFEST",
    "describe_os_error",
    "io_error",
    "refuse_collisions",
    "OutputFolder",
    "atomic_write",
    "file_digest",
    "write_data",
    "file_target",
]

MANIFEST = ".msrf-manifest.jsonl"


def describe_os_error(error: OSError) -> str:
    """The cause of an I/O error in words: ``no space left on device``, ``permission denied``…"""
    if error.errno == errno.ENOSPC:
        return "no space left on device"
    text = error.strerror or (os.strerror(error.errno) if error.errno else str(error))
    return (text or type(error).__name__).strip().lower()


def io_error(path: str | Path, error: OSError, what: str = "cannot write") -> MSRFError:
    """A one-line :class:`MSRFError` for a failed write: ``path: cannot write (cause)``."""
    return MSRFError(f"{path}: {what} ({describe_os_error(error)})")


def refuse_collisions(
    out: str | Path,
    *,
    input_files: Iterable[str | Path] = (),
    input_folders: Iterable[str | Path] = (),
    outputs: Iterable[str] = (),
    option: str = "--out",
) -> None:
    """Refuse an output folder ``out`` that collides with the inputs, in one line naming the
    collision: ``out`` is, or lies inside, one of ``input_folders`` (folders whose files are read
    as inputs: a later run would read the outputs as inputs); ``out`` is one of ``input_files``;
    or one of ``outputs`` (file names under ``out``) is one of ``input_files`` (it would replace
    an input). A folder beside an input file, or the folder that holds input files given by
    name, is allowed when no output name is an input. Symbolic links are resolved."""
    target = _real(out)
    for folder in input_folders:
        source = _real(folder)
        if target == source or target.is_relative_to(source):
            where = "is the input folder" if target == source else "lies inside the input folder"
            raise MSRFError(
                f"{option} {out}: {where} {folder}; msrf never writes among its "
                "inputs, choose a folder outside it"
            )
    files = {_real(f): f for f in input_files}
    if target in files:
        raise MSRFError(f"{option} {out}: is the input file {files[target]}; choose a folder")
    for name in outputs:
        taken = files.get(_real(target / name))
        if taken is not None:
            raise MSRFError(
                f"{option} {out}: the output {Path(out) / name} would replace the input file "
                f"{taken}; msrf never writes over its inputs, choose another folder"
            )


def _real(path: str | Path) -> Path:
    """``path`` absolute with every symbolic link resolved (one that loops or leads nowhere
    stays as it is: reading it names the problem)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's content, hex: the one digest of a file in msrfnet (the manifest,
    the settings of ``--skip-existing``, an export's and ``GET /model``'s weights digest)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class OutputFolder:
    """An output folder: which of its files msrf wrote (the manifest), and the safe writers.

    ``command`` is recorded with each file; ``overwrite`` allows replacing earlier msrf outputs;
    ``resumable`` names ``--skip-existing`` in refusals. ``settings`` (JSON-able: what determines
    the outputs' content) is recorded as a digest with each file, and an output kept by
    ``skip_existing`` must have been written with the same. The folder is created at the first
    write.
    """

    def __init__(
        self,
        root: str | Path,
        command: str,
        *,
        overwrite: bool = False,
        option: str = "--out",
        resumable: bool = False,
        settings: object = None,
    ):
        self.root = Path(root)
        self.settings = (
            None
            if settings is None
            else hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        )
        self.command = command
        self.overwrite = overwrite
        self.option = option
        self.resumable = resumable
        if self.root.exists() and not self.root.is_dir():
            raise MSRFError(f"{option} {self.root}: exists and is not a folder")
        self._known: dict[str, dict[str, set]] | None = None

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def _records(self) -> dict[str, dict[str, set]]:
        """name → {SHA-256 of each content msrf wrote under that name → the settings digests it
        was written with (None: not recorded)}; torn lines are ignored."""
        if self._known is None:
            self._known = {}
            try:
                text = self.manifest.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                text = ""
            except OSError as e:
                raise io_error(self.manifest, e, "cannot read") from e
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                    contents = self._known.setdefault(str(record["file"]), {})
                    contents.setdefault(str(record["sha256"]), set()).add(record.get("settings"))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash or a full disk
        return self._known

    def state(self, name: str) -> str:
        """``absent``, ``ours`` (content msrf wrote under this name) or ``foreign``."""
        return self._content(name)[0]

    def _content(self, name: str) -> tuple[str, set]:
        """:meth:`state`, and for ``ours`` the settings digests its current content was written
        with (one read of the file for both)."""
        path = self.root / name
        if not path.exists() and not path.is_symlink():
            return "absent", set()
        if path.is_symlink() or not path.is_file():
            return "foreign", set()
        try:
            digest = file_digest(path)
        except OSError as e:
            raise io_error(path, e, "cannot read") from e
        settings = self._records().get(name, {}).get(digest)
        return ("ours", settings) if settings is not None else ("foreign", set())

    def _refusal(self, name: str, state: str) -> MSRFError:
        path = self.root / name
        if state == "other settings":
            return MSRFError(
                f"{path}: written by an earlier msrf run with other weights or options; pass "
                f"--overwrite to replace the earlier outputs, or choose another {self.option}"
            )
        if state == "foreign":
            kind = "a folder" if path.is_dir() else "a file msrf did not write (or changed since)"
            return MSRFError(
                f"{path}: exists and is {kind}; refusing to replace it: choose "
                f"another {self.option} or move it away"
            )
        flags = "--overwrite to replace" + (" or --skip-existing to keep" if self.resumable else "")
        return MSRFError(
            f"{path}: exists (written by an earlier msrf run); pass {flags} the earlier outputs"
        )

    def plan(self, groups: Sequence[Sequence[str]], *, skip_existing: bool = False) -> list[bool]:
        """Check every output name before anything runs; ``groups`` holds each input's names.

        Returns, per group, whether it is done already (``skip_existing`` and every name an
        msrf output). Raises for a name held by a foreign file or folder, and for an earlier
        msrf output unless ``overwrite`` (or ``skip_existing``) allows it.
        """
        done = []
        allowed = self.overwrite or skip_existing
        for names in groups:
            contents = [self._content(n) for n in names]
            for name, (state, _) in zip(names, contents):
                if state == "foreign" or (state == "ours" and not allowed):
                    raise self._refusal(name, state)
            finished = skip_existing and all(state == "ours" for state, _ in contents)
            for name, (_, settings) in zip(names, contents) if finished else ():
                if self.settings not in settings:
                    raise self._refusal(name, "other settings")
            done.append(finished)
        return done

    def _guard(self, name: str) -> None:
        state = self.state(name)
        if state == "foreign" or (state == "ours" and not self.overwrite):
            raise self._refusal(name, state)

    def write_file(self, name: str, write: Callable[[str], object]) -> Path:
        """``write(tmp_path)`` then record and rename onto ``root/name``; returns the path.

        Raises:
            MSRFError: the name is taken (see :meth:`plan`), or an I/O error (one line with the
                cause); the temporary file is removed and an older file stays as it was.
        """
        self._guard(name)
        target = self.root / name

        def write_and_record(tmp: str) -> None:
            write(tmp)
            self._record(name, file_digest(tmp))

        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise io_error(target.parent, e, "cannot create the output folder") from e
        try:
            atomic_write(target, write_and_record)
        except OSError as e:
            raise io_error(target, e) from e
        return target

    def write_bytes(self, name: str, data: bytes) -> Path:
        """``data`` as ``root/name``, atomically and recorded in the manifest."""
        return self.write_file(name, lambda tmp: write_data(tmp, data))

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def remove(self, name: str) -> bool:
        """Delete ``root/name`` when it is an msrf output (never anything else); True if deleted."""
        if self.state(name) != "ours":
            return False
        try:
            (self.root / name).unlink()
        except OSError as e:
            raise io_error(self.root / name, e, "cannot remove") from e
        return True

    def _record(self, name: str, sha256: str) -> None:
        line = json.dumps(
            {
                "file": name,
                "sha256": sha256,
                "command": self.command,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **({"settings": self.settings} if self.settings else {}),
            }
        )
        try:
            with open(self.manifest, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as e:
            raise io_error(self.manifest, e) from e
        self._records().setdefault(name, {}).setdefault(sha256, set()).add(self.settings)


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (same folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_data(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (the one low-level writer of the safe outputs; tests inject
    disk-full errors here)."""
    with open(path, "wb") as f:
        f.write(data)


def file_target(
    out: str | Path,
    command: str,
    *,
    inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
    option: str = "--out",
) -> tuple[OutputFolder, str]:
    """The folder and name of a one-file output (an export), checked: not a folder, not inside
    ``inputs``, not replacing a file msrf did not write (nor an earlier export without
    ``overwrite``)."""
    out = Path(out)
    if out.is_dir():
        example = out / "msrfnet.onnx"
        raise MSRFError(f"{option} {out}: is a folder; name the file to write (e.g. {example})")
    refuse_collisions(out.parent, input_folders=inputs, option=option)
    folder = OutputFolder(out.parent, command, overwrite=overwrite, option=option)
    folder.plan([[out.name]])
    return folder, out.name
