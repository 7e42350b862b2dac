"""An output folder and the record of what kdistill wrote there, so that only kdistill's own files
are ever removed or replaced.

Every command that fills a folder (``run``, ``demo``, ``train``, ``tune``, ``search-student``)
names up front the paths it will write there, its *targets* (``config.yaml``, ``teacher``, ...,
relative to the folder; a folder target is kdistill's as a whole), and goes through three steps:

1. :func:`plan_output` only checks, before any work: the folder is not inside a file, its manifest
   is readable, and no target already exists unless an earlier kdistill command recorded it (or
   ``--overwrite`` lets this one take it over). Nothing is written.
2. :meth:`OutputPlan.open` is the command's first write: it removes what the earlier commands
   recorded (all of it, or only what this command replaces), records this command's targets in
   ``kdistill-manifest.json`` and writes the ``INCOMPLETE.txt`` marker.
3. :meth:`OutputPlan.close` removes the marker once the last output is written. A command that
   fails or is interrupted in between leaves the marker: the folder says it holds an unfinished run.

Why a manifest rather than names: a folder may hold the user's own ``config.yaml`` or
``teacher/`` (git, rsync and HuggingFace's Trainer likewise refuse to overwrite what they did not
write). Why remove up front rather than build the run elsewhere and swap it in: an interrupted run
must stay resumable where it ran, the paths written into model.json and results.json name the
final folder, and a folder that also holds the user's files cannot be swapped in one rename.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kdistill import __version__
from kdistill.errors import ConfigError
from kdistill.fileio import is_leftover_of, remove_path, write_json_atomic, write_text_atomic
from kdistill.log import log

MANIFEST = "kdistill-manifest.json"
INCOMPLETE = "INCOMPLETE.txt"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class OutputPlan:
    """What a command will do to its output folder, decided (and checked) before it writes."""

    out: Path
    targets: tuple[str, ...]  # what this command writes, relative to ``out``
    recorded: tuple[str, ...]  # what earlier kdistill commands recorded writing here
    remove: tuple[str, ...]  # removed by open(): the earlier outputs this command replaces
    kept: tuple[str, ...]  # recorded, but left in place because this command reads them
    foreign: tuple[str, ...]  # targets no manifest records, replaced (or, resuming, adopted): --overwrite
    resume: bool = False

    def open(self) -> None:
        """The command's first write: remove ``remove``, record the targets, mark the folder
        incomplete."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.foreign:
            action = "adopting" if self.resume else "replacing"
            log.info(f"{self.out}: --overwrite: {action} {_listed(list(self.foreign))}, which no kdistill "
                     f"command recorded writing")
        removed = [shown for path in self._files_first(self.remove) if (shown := _remove_recorded(self.out, path))]
        if removed:
            kept = f"; left {_listed(self.kept)} in place (this run reads them)" if self.kept else ""
            log.info(f"{self.out}: removed the earlier kdistill outputs {_listed(removed)}{kept}")
        recorded = {path for path in self.recorded if path not in self.remove}
        write_json_atomic(self.out / MANIFEST, {
            "written_by": "kdistill", "format": MANIFEST_FORMAT, "kdistill_version": __version__,
            "paths": sorted(recorded | set(self.targets) | {INCOMPLETE})})
        write_text_atomic(self.out / INCOMPLETE, "A kdistill command writing this folder has not "
                          "finished: it is running, failed or was interrupted. results.json is written "
                          "last. Continue with --resume, or run again.\n")

    def _files_first(self, paths: tuple[str, ...]) -> list[str]:
        """Files (results.json, the reports) before folders (checkpoints), so that a removal cut
        short never leaves a summary describing models already gone."""
        return sorted(paths, key=lambda path: ((self.out / path).is_dir(), path))

    def close(self) -> None:
        """Every output is written: the folder no longer holds an unfinished run."""
        (self.out / INCOMPLETE).unlink(missing_ok=True)


def plan_output(out: Path, targets: list[str], *, resume: bool = False, overwrite: bool = False,
                replace_all: bool = True, stale: tuple[str, ...] = (), inputs: list[Path] = ()) -> OutputPlan:
    """Check ``out`` for a command that writes ``targets`` there; raise a one-line
    :class:`ConfigError` naming what is in the way. Writes nothing.

    ``replace_all``: a new run replaces everything earlier commands recorded (``run``, ``tune``);
    otherwise only the targets and the ``stale`` paths that describe them (``train``, one model).
    ``resume`` removes nothing. ``overwrite`` lets this command replace (or, resuming, adopt)
    targets no manifest records. ``inputs``: files and folders this command reads; never removed.
    """
    check_out_folder(out)
    targets = tuple(dict.fromkeys([*targets, INCOMPLETE]))
    recorded = read_manifest(out)
    foreign = [path for path in targets if _in_the_way(out, path, recorded)]
    if foreign and not overwrite:
        raise ConfigError(
            f"{out}: holds {_listed([_shown(out, p) for p in foreign])}, which this command writes but no "
            f"kdistill command recorded writing ({MANIFEST}); move them away, choose another --out, "
            f"or pass --overwrite to let kdistill replace them")
    shown = tuple(_shown(out, path) for path in foreign)
    if resume:
        return OutputPlan(out, targets, recorded, (), (), shown, resume=True)
    if replace_all:
        earlier = [*recorded, *foreign]
    else:
        earlier = [p for p in targets if _covered(p, recorded)] + [p for p in stale if p in recorded] + foreign
    inputs = [Path(path).expanduser().resolve() for path in inputs]
    earlier = list(dict.fromkeys(earlier))  # those already gone may have left temporary files
    kept = tuple(path for path in earlier if _holds_an_input(out / path, inputs))
    remove = tuple(path for path in earlier if path not in kept)
    return OutputPlan(out, targets, recorded, remove, kept, shown)


def check_out_folder(out: Path) -> None:
    """The output folder must be a folder (or not exist yet) below folders, not files."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise ConfigError(f"{path}: the output folder (out / --out) would be inside a file")
            return


def read_manifest(out: Path) -> tuple[str, ...]:
    """The paths earlier kdistill commands recorded writing in ``out`` (none without a manifest).
    A manifest kdistill cannot read is an error, never a reason to guess."""
    path = out / MANIFEST
    if not os_exists(path):
        return ()
    try:
        manifest = json.loads(path.read_text())
        paths = manifest["paths"] if isinstance(manifest, dict) and manifest.get("written_by") == "kdistill" else None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); move it away (kdistill then treats every file "
                          f"here as yours)") from None
    if not isinstance(paths, list) or not all(_is_safe_relative(p) for p in paths):
        raise ConfigError(f"{path}: not a kdistill manifest (a list of relative paths under 'paths'); "
                          f"move it away (kdistill then treats every file here as yours)")
    return tuple(paths)


def os_exists(path: Path) -> bool:
    """Exists, or is a symbolic link (a broken link is still in the way)."""
    return path.exists() or path.is_symlink()


def _is_safe_relative(path) -> bool:
    """A manifest may only name paths inside its folder: a tampered one must not reach outside."""
    if not isinstance(path, str) or not path:
        return False
    pure = PurePosixPath(path)
    return not pure.is_absolute() and ".." not in pure.parts and "." not in pure.parts and "\\" not in path


def _covered(path: str, recorded: tuple[str, ...]) -> bool:
    """``path`` or a folder holding it was recorded."""
    parts = PurePosixPath(path).parts
    return any("/".join(parts[:i]) in recorded for i in range(1, len(parts) + 1))


def _in_the_way(out: Path, path: str, recorded: tuple[str, ...]) -> bool:
    """Writing ``path`` would replace something no kdistill command recorded: the path itself, or a
    file (or link) where one of its folders has to be."""
    if _covered(path, recorded):
        return False
    parts = PurePosixPath(path).parts
    for i in range(1, len(parts)):
        folder = out.joinpath(*parts[:i])
        if os_exists(folder) and (folder.is_symlink() or not folder.is_dir()):
            return True
    return os_exists(out / path)


def _shown(out: Path, path: str) -> str:
    return path + ("/" if (out / path).is_dir() and not (out / path).is_symlink() else "")


def _remove_recorded(out: Path, path: str) -> str | None:
    """Remove ``out/path`` and what an interrupted atomic write of it left beside it; then the
    folders that only held it. Returns the path as shown in the log (None if it was not there). A
    path reached through a symbolic link is left alone: removing it would delete outside the folder."""
    target = out / path
    parents = list(target.relative_to(out).parents)[:-1]  # its folders inside out, innermost first
    if any((out / folder).is_symlink() for folder in parents):
        return None
    found = _shown(out, path) if os_exists(target) else None
    remove_path(target)
    if target.parent.is_dir():
        for entry in target.parent.iterdir():
            if is_leftover_of(entry.name, target.name):
                remove_path(entry)
    for folder in parents:
        if (out / folder).is_dir() and not any((out / folder).iterdir()):
            (out / folder).rmdir()
    return found


def _holds_an_input(entry: Path, inputs: list[Path]) -> bool:
    """``entry`` is, or holds, a file or folder this command reads."""
    target = entry.resolve()
    return any(path == target or target in path.parents for path in inputs)


def _listed(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
