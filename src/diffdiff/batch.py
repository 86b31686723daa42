"""Batch editing: a manifest of edits run with one loaded model, resumable, locally or on Ray.

This module owns the manifest (JSON Lines or CSV) and its rows: field types, per-row defaults,
validation (the add-on input columns against the add-ons the model will carry,
:class:`LoadedAddons`, before it is loaded), ids and output names; the grouping of rows into work units; the worker-side execution
of a unit (open the inputs, call :meth:`Editor.edit` / :meth:`Editor.soft_inpaint` /
:meth:`Editor.auto_map`, write or encode the PNGs with the CLI's metadata); the results log
``OUTDIR/results.jsonl`` and resuming from it; the local runner; the run's :class:`Summary`; and
:func:`run`, the Python entry point. Running units on Ray actors is :mod:`diffdiff.batch_ray`, a
generic actor pool that this module drives (it never imports this module).

Resume rule: a row is skipped when ``results.jsonl`` holds an ``ok`` line for its id AND every
output file it lists exists. Outputs are written atomically before their line is appended, so a
crash between the two leaves a complete PNG without a line: the row runs again and replaces it.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import re
import secrets
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .addon_inputs import check_control_from, check_scales, union_mode
from .automap import recorded_settings
from .editor import Editor
from .errors import DiffDiffError, DiffDiffWarning
from .io import numbered_paths, open_image, pnginfo_for, save_png_atomic
from .mapsettings import MAP_ENCODE_STRENGTH, MAP_NUM_MAPS
from .request import EditRequest
from .softinpaint import soft_inpaint_with

try:  # POSIX: one writer per output folder
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

RESULTS_FILE = "results.jsonl"
LOCK_FILE = ".diffdiff-batch.lock"

#: Manifest fields and their types. ``map`` / ``mask`` (+ ``softness``) / ``source_prompt`` pick the kind.
FIELDS: dict[str, type] = {
    "id": str,
    "image": str,
    "map": str,
    "mask": str,
    "softness": float,
    "source_prompt": str,
    "prompt": str,
    "negative_prompt": str,
    "steps": int,
    "seed": int,
    "strength": float,
    "guidance": float,
    "num_images": int,
    "polarity": str,
    "paste_back": bool,
    "crop": bool,
    "crop_padding": int,
    "crop_resolution": str,
    "skip_frozen": bool,
    "num_maps": int,
    "encode_strength": float,
    # add-on inputs (for a model loaded with --controlnet / --ip-adapter)
    "control_image": str,
    "control_from": str,
    "control_scale": float,
    "control_mode": str,
    "ip_adapter_image": str,
}
#: The add-on input fields a ControlNet takes.
CONTROL_FIELDS = ("control_image", "control_from", "control_scale", "control_mode")
#: Add-on input fields that are files (relative paths resolve like 'image').
ADDON_FILES = {"control_image": "control image", "ip_adapter_image": "IP-Adapter image"}
KINDS = ("map", "mask", "source_prompt")
#: Settings every row gets unless it or a default says otherwise (the ``diffdiff edit`` defaults).
BASE_SETTINGS: dict[str, Any] = {
    "steps": 50, "strength": 1.0, "num_images": 1, "polarity": "change", "paste_back": True, "crop": False,
    "crop_padding": 32, "skip_frozen": False, "num_maps": MAP_NUM_MAPS, "encode_strength": MAP_ENCODE_STRENGTH,
}
_ONLY_FOR = {"softness": "mask", "num_maps": "source_prompt", "encode_strength": "source_prompt"}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


# --------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One valid manifest row, with its defaults applied and its paths absolute."""

    number: int  # 1-based position among the manifest's rows
    id: str
    kind: str  # "map" | "mask" | "source_prompt"
    image: str
    source: str  # the map or mask path, or the source prompt
    settings: Mapping[str, Any]  # prompt, steps, strength, ... (no seed)
    seed: Optional[int]  # None: drawn when the row runs, then recorded
    outputs: tuple[str, ...]  # file names inside OUTDIR


@dataclass(frozen=True)
class LoadedAddons:
    """Which per-row add-on inputs the batch's model takes, known before it is loaded (rows are
    checked against it up front); ``None`` where :func:`run` is given one: not checked until a row runs."""

    controlnet: bool = False
    ip_adapter: bool = False

    @classmethod
    def of(cls, editor: Editor) -> LoadedAddons:
        return cls(bool(editor.addons.controlnets), editor.addons.ip_adapter is not None)

    @classmethod
    def from_load_kw(cls, kw: Mapping[str, Any]) -> LoadedAddons:
        """From ``Editor.from_pretrained`` keywords (the CLI's ``AddonOptions.load_kw()``)."""
        return cls(bool(kw.get("controlnet")), bool(kw.get("ip_adapter")))


@dataclass(frozen=True)
class BadRow:
    """A manifest row that cannot run; it is recorded as failed with ``error``."""

    number: int
    id: str
    error: str


@dataclass
class WorkUnit:
    """Rows that run as one pipeline call (one row unless :func:`group_rows` merged several)."""

    rows: list[Row]
    #: file path -> contents, when inputs travel as bytes (Ray without shared storage)
    files: Optional[dict[str, bytes]] = None


def _coerce(name: str, value: Any, from_text: bool) -> Any:
    """The value of field ``name`` as its type; CSV cells arrive as text."""
    kind = FIELDS[name]
    if from_text and isinstance(value, str):
        text = value.strip()
        if kind is str:
            return value
        try:
            if kind is bool:
                if text.lower() in _TRUE:
                    return True
                if text.lower() in _FALSE:
                    return False
                raise ValueError(text)
            if kind is int:
                return int(text)
            return float(text)
        except ValueError:
            raise DiffDiffError(f"field '{name}' must be {_type_word(kind)}, got {value!r}") from None
    if kind is str and name in ("crop_resolution", "control_mode") and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise DiffDiffError(f"field '{name}' must be {_type_word(kind)}, got {value!r}")
    return value


def _type_word(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[kind]


def _clean(record: Mapping[str, Any], from_text: bool) -> dict[str, Any]:
    """Known fields only, typed; empty values (null, empty CSV cell) count as absent."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = str(key).strip()
        if name not in FIELDS:
            close = [f for f in FIELDS if f.replace("_", "") == name.replace("_", "").replace("-", "").lower()]
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DiffDiffError(f"unknown field '{name}'{hint}")
        if value is None or (from_text and isinstance(value, str) and value.strip() == ""):
            continue
        out[name] = _coerce(name, value, from_text)
    return out


def _default_id(image: str, number: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image).stem).strip("._-") or "row"
    return f"{stem}-{number}"


def _abs(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p))


def make_row(record: Mapping[str, Any], number: int, base_dir: Path, defaults: Mapping[str, Any],
             from_text: bool = False, addons: Optional[LoadedAddons] = None) -> Row:
    """Validate one manifest record (raises :class:`DiffDiffError` naming the problem); ``addons``:
    what the model will carry, to refuse add-on inputs it has no add-on for (``None``: not checked)."""
    rec = _clean(record, from_text)
    if "image" not in rec:
        raise DiffDiffError("missing field 'image'")
    kinds = [k for k in KINDS if k in rec]
    if len(kinds) > 1:
        raise DiffDiffError(f"give one of 'map', 'mask' or 'source_prompt', not {' and '.join(kinds)}")
    if not kinds:  # a default kind (--map / --mask / --auto-map for every row)
        kinds = [k for k in KINDS if defaults.get(k) is not None]
        if len(kinds) != 1:
            raise DiffDiffError("missing 'map', 'mask' (+ 'softness') or 'source_prompt' (no default given)")
        rec[kinds[0]] = defaults[kinds[0]]
    kind = kinds[0]
    for name, owner in _ONLY_FOR.items():
        if name in rec and owner != kind:
            raise DiffDiffError(f"'{name}' applies to '{owner}' rows only")
    if kind != "map" and rec.get("polarity", "change") != "change":
        raise DiffDiffError(f"'polarity' applies to 'map' rows only ({kind} rows are always white = change)")
    settings: dict[str, Any] = dict(BASE_SETTINGS)
    for name, value in defaults.items():
        if name in FIELDS and name not in ("id", "image", *KINDS) and value is not None:
            if name in _ONLY_FOR and _ONLY_FOR[name] != kind:
                continue  # e.g. --softness is for mask rows
            if name == "polarity" and kind != "map":
                continue
            if name in ("control_image", "control_from") and ("control_image" in rec or "control_from" in rec):
                continue  # the row's own control input replaces the default one
            settings[name] = value
    for name, value in rec.items():
        if name not in ("id", "image", *KINDS):
            settings[name] = value
    if kind != "map":
        settings["polarity"] = "change"
    if "prompt" not in settings:
        raise DiffDiffError("missing field 'prompt' (and no --prompt default)")
    if kind == "mask" and "softness" not in settings:
        raise DiffDiffError("a 'mask' row needs 'softness' (or a --softness default)")
    if kind == "mask" and not (isinstance(settings["softness"], float) and settings["softness"] >= 0):
        raise DiffDiffError(f"softness must be a number >= 0, got {settings['softness']!r}")
    for name in ADDON_FILES:
        if name in rec:
            settings[name] = _abs(rec[name], base_dir)
    _check_addon_inputs(settings, addons)
    seed = settings.pop("seed", None)
    row_request(settings, seed)  # validates every edit field the row has, one line naming the first bad one
    if kind == "source_prompt":
        if settings["num_maps"] < 1:
            raise DiffDiffError(f"num_maps must be a positive integer, got {settings['num_maps']}")
        if not 0 < settings["encode_strength"] <= 1:
            raise DiffDiffError(f"encode_strength must be in (0, 1], got {settings['encode_strength']}")
    row_id = rec.get("id") or _default_id(rec["image"], number)
    if not _ID_RE.match(row_id):
        raise DiffDiffError(f"id {row_id!r} is not a safe file name (letters, digits, '.', '_', '-'; 200 at most)")
    source = rec[kind] if kind == "source_prompt" else _abs(rec[kind], base_dir)
    outputs = tuple(p.name for p in numbered_paths(Path(f"{row_id}.png"), settings["num_images"]))
    return Row(number, row_id, kind, _abs(rec["image"], base_dir), source, settings, seed, outputs)


def _check_addon_inputs(settings: Mapping[str, Any], addons: Optional[LoadedAddons]) -> None:
    """A row's add-on inputs: their files exist, and the model has the add-on each needs."""
    for name, what in ADDON_FILES.items():
        path = settings.get(name)
        if path is not None and not Path(path).is_file():
            raise DiffDiffError(f"'{name}': {what} file '{path}' does not exist")
    if "control_image" in settings and "control_from" in settings:
        raise DiffDiffError("give 'control_image' or 'control_from', not both")
    check_control_from(settings.get("control_from"))
    if "control_scale" in settings:
        check_scales(settings["control_scale"], "control_scale")
    if "control_mode" in settings:
        union_mode(settings["control_mode"], None)  # a known name or a number
    if addons is None:
        return
    control = [n for n in CONTROL_FIELDS if n in settings]
    if control and not addons.controlnet:
        raise DiffDiffError(f"'{control[0]}' needs a ControlNet: load one with --controlnet PATH")
    if addons.controlnet and "control_image" not in settings and "control_from" not in settings:
        raise DiffDiffError("a ControlNet is loaded: the row needs 'control_image' or 'control_from' "
                            "(or a --control-image / --control-from default)")
    if "ip_adapter_image" in settings and not addons.ip_adapter:
        raise DiffDiffError("'ip_adapter_image' needs an IP-Adapter: load one with --ip-adapter FILE")
    if addons.ip_adapter and "ip_adapter_image" not in settings:
        raise DiffDiffError("an IP-Adapter is loaded: the row needs 'ip_adapter_image' (or an --ip-adapter-image default)")


def read_manifest(path: str | os.PathLike[str]) -> list[tuple[Mapping[str, Any] | DiffDiffError, bool]]:
    """The manifest's records in order: (record or its parse error, values are text).

    ``.csv`` files are CSV with a header row; anything else is JSON Lines (blank lines ignored).
    """
    p = Path(path)
    if not p.exists():
        raise DiffDiffError(f"manifest '{p}' does not exist")
    if p.is_dir():
        raise DiffDiffError(f"manifest '{p}' is a directory, not a file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DiffDiffError(f"manifest '{p}' is not UTF-8 text") from None
    except OSError as exc:
        raise DiffDiffError(f"manifest '{p}' cannot be read ({exc.strerror})") from None
    records: list[tuple[Mapping[str, Any] | DiffDiffError, bool]] = []
    if p.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise DiffDiffError(f"manifest '{p}' is empty (a CSV manifest needs a header row)")
        for rec in reader:
            if None in rec:
                records.append((DiffDiffError(f"line {reader.line_num}: more cells than header columns"), True))
            else:
                records.append((rec, True))
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                records.append((DiffDiffError(f"line {lineno}: not valid JSON ({exc.msg})"), False))
                continue
            if not isinstance(rec, dict):
                records.append((DiffDiffError(f"line {lineno}: expected a JSON object, got {type(rec).__name__}"), False))
            else:
                records.append((rec, False))
    if not records:
        raise DiffDiffError(f"manifest '{p}' has no rows")
    return records


def build_rows(records: Sequence[tuple[Mapping[str, Any] | DiffDiffError, bool]], base_dir: Path,
               defaults: Mapping[str, Any] | None = None, addons: Optional[LoadedAddons] = None) -> list[Row | BadRow]:
    """Validate every record; bad ones become :class:`BadRow` (so the run goes on without them)."""
    unknown = set(defaults or {}) - set(FIELDS)
    if unknown:
        raise DiffDiffError(f"unknown default(s): {', '.join(sorted(unknown))}")
    defaults = {k: _coerce(k, v, False) for k, v in (defaults or {}).items() if v is not None}
    rows: list[Row | BadRow] = []
    owners: dict[str, str] = {}  # output file name -> id of the row writing it
    ids: dict[str, int] = {}
    for number, (rec, from_text) in enumerate(records, 1):
        fallback = f"row-{number}"
        if isinstance(rec, DiffDiffError):
            rows.append(BadRow(number, fallback, str(rec)))
            continue
        given_id, image = rec.get("id"), rec.get("image")
        if isinstance(given_id, str) and _ID_RE.match(given_id):
            bad_id = given_id
        else:
            bad_id = _default_id(image, number) if isinstance(image, str) and not given_id else fallback
        try:
            row = make_row(rec, number, base_dir, defaults, from_text, addons)
        except DiffDiffError as exc:
            rows.append(BadRow(number, bad_id, str(exc)))
            continue
        if row.id in ids:
            rows.append(BadRow(number, fallback, f"duplicate id '{row.id}' (first used by row {ids[row.id]})"))
            continue
        clash = next((o for o in row.outputs if o in owners), None)
        if clash is not None:
            rows.append(BadRow(number, row.id, f"output '{clash}' is also written by row '{owners[clash]}'"))
            continue
        ids[row.id] = number
        owners.update(dict.fromkeys(row.outputs, row.id))
        rows.append(row)
    return rows


def group_rows(rows: Sequence[Row], group_size: int = 1) -> list[WorkUnit]:
    """Work units of at most ``group_size`` rows that can share one pipeline call.

    :meth:`Editor.edit` takes one image, one map and one seed per call, so rows can only share a
    call when they are the same edit: same image, map/mask/source prompt and settings, one image
    each, and no seed (their seed is drawn anyway). Such rows run as ONE call with
    ``num_images = len(group)`` and one drawn seed; row ``i`` gets image ``i`` of it, which
    ``diffdiff edit ... --seed S --num-images K`` reproduces (its metadata records seed, index and
    num_images). Every other row is a unit of its own; its ``num_images`` variations are one batch.
    """
    if group_size < 1:
        raise DiffDiffError(f"group_size must be a positive integer, got {group_size}")
    units: list[WorkUnit] = []
    open_groups: dict[Any, WorkUnit] = {}
    for row in rows:
        if group_size == 1 or row.seed is not None or row.settings["num_images"] != 1:
            units.append(WorkUnit([row]))
            continue
        key = (row.kind, row.image, row.source, tuple(sorted(row.settings.items())))
        unit = open_groups.get(key)
        if unit is None or len(unit.rows) >= group_size:
            unit = WorkUnit([row])
            open_groups[key] = unit
            units.append(unit)
        else:
            unit.rows.append(row)
    return units


# --------------------------------------------------------------------------------------------------
# Worker side: one unit -> results (and PNGs)
# --------------------------------------------------------------------------------------------------
def _open(path: str, what: str, files: Optional[dict[str, bytes]], want_sha: bool = False) -> tuple[Image.Image, str]:
    """The image at ``path`` (from ``files`` when inputs travel as bytes) and, if wanted, its file's sha256."""
    if files is None:
        img = open_image(path, what)
        return img, (hashlib.sha256(Path(path).read_bytes()).hexdigest() if want_sha else "")
    data = files[path]
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            img = im.copy()
    except UnidentifiedImageError:
        raise DiffDiffError(f"{what} file '{path}' is not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DiffDiffError(f"{what} file '{path}' is corrupt or truncated ({exc})") from None
    return img, (hashlib.sha256(data).hexdigest() if want_sha else "")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, DiffDiffError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory; try a smaller image, crop, or fewer images"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'unexpected failure'}"


def execute_unit(editor: Editor, unit: WorkUnit, write_dir: Optional[str] = None) -> list[dict[str, Any]]:
    """Run one unit; one result dict per row (never raises for a bad row).

    With ``write_dir`` the PNGs are written there atomically (local runs, shared storage); without
    it their encoded bytes come back under ``"png"`` for the driver to write.
    """
    rows = unit.rows
    first = rows[0]
    s = dict(first.settings)
    seed = first.seed if first.seed is not None else secrets.randbits(31)
    count = len(rows)
    t0 = time.perf_counter()
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DiffDiffWarning)
            img, _ = _open(first.image, "image", unit.files)
            request = _with_addon_files(row_request(s, seed, count), s, unit.files)
            name = Path(first.image).name
            if first.kind == "map":
                cmap, sha = _open(first.source, "change map", unit.files, want_sha=True)
                images = editor.edit_with(img, cmap, request.with_metadata(
                    {"image_file": name, "map_file": Path(first.source).name, "map_file_sha256": sha}))
            elif first.kind == "mask":
                mask, _ = _open(first.source, "mask", unit.files)
                images = soft_inpaint_with(editor, img, mask, s["softness"], request.with_metadata(
                    {"image_file": name, "mask_file": Path(first.source).name}))
            else:
                cmap = editor.auto_map(img, first.source, s["prompt"], num_maps=s["num_maps"],
                                       encode_strength=s["encode_strength"], seed=seed)
                images = editor.edit_with(img, cmap, request.replace(polarity="change").with_metadata(
                    {"image_file": name, "auto_map_source": first.source, "auto_map": recorded_settings(cmap)}))
    except Exception as exc:
        seconds = (time.perf_counter() - t0) / count
        return [_result(r, "error", r.seed, seconds, error=_one_line(exc)) for r in rows]
    notes = sorted({str(w.message) for w in caught if issubclass(w.category, DiffDiffWarning)})
    seconds = (time.perf_counter() - t0) / count
    results = []
    per_row = s["num_images"]
    for i, row in enumerate(rows):
        mine = images[i * per_row:(i + 1) * per_row]
        res = _result(row, "ok", seed, seconds, warnings=notes)
        try:
            if write_dir is not None:
                for im, out in zip(mine, row.outputs):
                    save_png_atomic(im, Path(write_dir) / out, im.info.get("diffdiff"))
            else:
                res["png"] = [_png_bytes(im) for im in mine]
        except Exception as exc:  # e.g. disk full: this row failed, nothing half-written
            res = _result(row, "error", row.seed, seconds, error=f"writing the output failed: {_one_line(exc)}")
        results.append(res)
    return results


def _with_addon_files(request: EditRequest, s: Mapping[str, Any], files: Optional[dict[str, bytes]]) -> EditRequest:
    """With inputs as bytes: the add-on images opened from them, their file names recorded as a path would be."""
    if files is None:
        return request  # paths: the editor opens them and records their names
    changes: dict[str, Any] = {}
    names: dict[str, Any] = {}
    if s.get("control_image") is not None:
        changes["control_image"], _ = _open(s["control_image"], "control image", files)
        names["control_image_files"] = [Path(s["control_image"]).name]
    if s.get("ip_adapter_image") is not None:
        changes["ip_adapter_image"], _ = _open(s["ip_adapter_image"], "IP-Adapter image", files)
        names["ip_adapter_image_file"] = Path(s["ip_adapter_image"]).name
    return request.replace(**changes).with_metadata(names) if changes else request


def row_request(s: Mapping[str, Any], seed: Optional[int], count: int = 1) -> EditRequest:
    """The :class:`~diffdiff.request.EditRequest` of a row's settings (``count`` rows merged into one call)."""
    return EditRequest(
        control_image=s.get("control_image"), control_from=s.get("control_from"),
        controlnet_conditioning_scale=s.get("control_scale"), control_mode=s.get("control_mode"),
        ip_adapter_image=s.get("ip_adapter_image"),
        prompt=s["prompt"], negative_prompt=s.get("negative_prompt"), num_inference_steps=s["steps"],
        guidance_scale=s.get("guidance"), strength=s["strength"], seed=seed, num_images=s["num_images"] * count,
        polarity=s.get("polarity", "change"), paste_back=s["paste_back"], crop=s["crop"],
        crop_padding=s["crop_padding"], skip_frozen=s["skip_frozen"],
        crop_resolution=_crop_resolution(s.get("crop_resolution")),
    )


def _crop_resolution(value: Optional[str]) -> Union[str, int, None]:
    return int(value) if value and value.isdigit() else value


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    meta = img.info.get("diffdiff")
    img.save(buf, format="PNG", pnginfo=pnginfo_for(meta) if meta else None)
    return buf.getvalue()


def _result(row: Row, status: str, seed: Optional[int], seconds: float, error: Optional[str] = None,
            warnings: Sequence[str] = ()) -> dict[str, Any]:
    ok = status == "ok"
    return {
        "id": row.id, "row": row.number, "status": status,
        "output": row.outputs[0] if ok else None, "outputs": list(row.outputs) if ok else [],
        "seed": seed, "seconds": round(seconds, 4), "error": error, "warnings": list(warnings),
    }


# --------------------------------------------------------------------------------------------------
# Driver side: results log, resume, runners
# --------------------------------------------------------------------------------------------------
class ResultsLog:
    """``OUTDIR/results.jsonl``: one JSON line per finished row, appended and fsynced by the driver alone.

    A line cut short by a crash (no final newline) is dropped when the log is opened again.
    """

    def __init__(self, outdir: Path) -> None:
        self.path = outdir / RESULTS_FILE
        self.done: dict[str, list[str]] = {}  # id -> outputs of its last ok line
        if self.path.exists():
            self._load()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _load(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # torn last line: cut it off before appending
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
            data = data[:keep]
        for line in data.decode("utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                continue
            if rec.get("status") == "ok":  # a later error line for the id changes nothing: its files decide
                self.done[rec["id"]] = [str(o) for o in rec.get("outputs") or []]

    def is_done(self, row: Row, outdir: Path) -> bool:
        outs = self.done.get(row.id)
        return outs == list(row.outputs) and all((outdir / o).is_file() for o in outs)

    def append(self, result: Mapping[str, Any]) -> None:
        line = json.dumps({k: v for k, v in result.items() if k != "png"}, sort_keys=False) + "\n"
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


@dataclass
class Summary:
    """What a batch run did. ``done``/``failed`` count this run's rows; ``skipped`` were done before."""

    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    retried: int = 0  # units resubmitted after a Ray worker died
    results: Optional[Path] = None
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, error)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def rows_per_minute(self) -> float:
        ran = self.done + self.failed
        return 60.0 * ran / self.seconds if self.seconds > 0 and ran else 0.0

    def line(self) -> str:
        parts = [f"{self.done} done", f"{self.failed} failed", f"{self.skipped} skipped (done before)"]
        if self.retried:
            parts.append(f"{self.retried} retried after a worker died")
        return (f"batch: {', '.join(parts)} of {self.total} rows in {self.seconds:.1f} s"
                f" ({self.rows_per_minute:.1f} rows/min); results in {self.results}")


def _write_bytes_atomic(data: bytes, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(outdir: Path) -> Iterator[None]:
    """Refuse a second run writing to the same folder; remove temp files a killed writer left
    (a killed run, or a Ray worker killed while writing to shared storage), before and after."""
    fh = open(outdir / LOCK_FILE, "a")  # noqa: SIM115
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise DiffDiffError(f"another diffdiff batch run is writing to '{outdir}'") from None
        _remove_temp_files(outdir)
        yield
        _remove_temp_files(outdir)
    finally:
        fh.close()


def _remove_temp_files(outdir: Path) -> None:
    for stale in outdir.glob(".*.png.*.tmp"):  # the temp names of save_png_atomic; we hold the lock
        with contextlib.suppress(OSError):
            stale.unlink()


def _prepare_outdir(outdir: str | os.PathLike[str]) -> Path:
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise DiffDiffError(f"output folder '{out}' is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiffDiffError(f"output folder '{out}' cannot be created ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise DiffDiffError(f"output folder '{out}' is not writable")
    return out


def load_model(model: str, device: Optional[str] = None, dtype: Optional[str] = None,
               max_pixels: Optional[int] = None, **kw: Any) -> Editor:
    """Load ``model`` once for a batch (each Ray worker calls this itself)."""
    ed = Editor.from_pretrained(model, device=device, torch_dtype=dtype, progress=False, **kw)
    if max_pixels is not None:
        ed.max_pixels = max_pixels
    return ed


EditorSource = Union[Editor, str, os.PathLike, Callable[[], Editor]]


def run(
    manifest: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    outdir: str | os.PathLike[str],
    editor_or_model: EditorSource,
    *,
    defaults: Optional[Mapping[str, Any]] = None,
    base_dir: str | os.PathLike[str] | None = None,
    group_size: int = 1,
    ray: Optional[str] = None,
    workers: Optional[int] = None,
    shared_storage: bool = False,
    progress: bool = False,
    on_result: Optional[Callable[[Mapping[str, Any]], None]] = None,
    addons: Optional[LoadedAddons] = None,
) -> Summary:
    """Run every row of ``manifest`` not done yet; return the :class:`Summary`.

    ``manifest``: a ``.jsonl`` / ``.csv`` file (relative paths resolve against its folder) or a list
    of row dicts (paths against ``base_dir``, default the current folder). ``editor_or_model``: an
    :class:`Editor`, a model path / hub id, or a function returning an Editor (for Ray: a model or a
    picklable function; each worker loads its own). ``defaults`` give any field for every row.
    ``ray``: ``"auto"`` (the running cluster, or a new local one) or a cluster address; ``workers``:
    that many CPU actors instead of one per GPU; ``shared_storage``: workers read inputs and write
    outputs by path instead of receiving and returning bytes. ``addons``: the add-ons the model
    will carry (a function or model loaded with add-ons), so rows are checked against them before
    any model is loaded; by default those of an :class:`Editor`, none for a model path, and for a
    function unchecked until a row runs.
    """
    t0 = time.perf_counter()
    if ray is None and (workers is not None or shared_storage):
        raise DiffDiffError("workers (--workers) and shared storage (--shared-storage) go with ray (--ray auto|ADDRESS)")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise DiffDiffError(f"group_size must be a positive integer, got {group_size!r}")
    pool = _ray_pool() if ray is not None else None  # fails first, in one line, without ray installed
    if isinstance(manifest, (str, os.PathLike)):
        records = read_manifest(manifest)
        base = Path(manifest).resolve().parent
    else:
        records = [(dict(r), False) for r in manifest]
        base = Path(base_dir or ".").resolve()
        if not records:
            raise DiffDiffError("the manifest has no rows")
    if addons is None and isinstance(editor_or_model, (Editor, str, os.PathLike)):
        addons = LoadedAddons.of(editor_or_model) if isinstance(editor_or_model, Editor) else LoadedAddons()
    rows = build_rows(records, base, defaults, addons)
    out = _prepare_outdir(outdir)
    summary = Summary(total=len(rows), results=out / RESULTS_FILE)
    with _locked(out):
        log = ResultsLog(out)
        try:
            todo = [r for r in rows if isinstance(r, Row) and not log.is_done(r, out)]
            bad = [r for r in rows if isinstance(r, BadRow)]
            summary.skipped = len(rows) - len(todo) - len(bad)
            bar = tqdm(total=len(rows), initial=summary.skipped, unit="row", desc="batch", disable=not progress,
                       dynamic_ncols=True)

            def record(result: Mapping[str, Any]) -> None:
                result = {**result, "finished_at": round(time.time(), 3)}  # when the driver recorded it
                log.append(result)
                if result["status"] == "ok":
                    summary.done += 1
                else:
                    summary.failed += 1
                    summary.failures.append((result["id"], str(result["error"])))
                bar.update(1)
                bar.set_postfix(failed=summary.failed, refresh=False)
                if on_result is not None:
                    on_result(result)

            for b in bad:
                record({"id": b.id, "row": b.number, "status": "error", "output": None, "outputs": [],
                        "seed": None, "seconds": 0.0, "error": b.error, "warnings": []})
            units = group_rows(todo, group_size)
            if units:
                if pool is None or ray is None:
                    _run_local(units, editor_or_model, out, record)
                else:
                    summary.retried = _run_ray(pool, units, editor_or_model, out, record, ray, workers, shared_storage)
            bar.close()
        finally:
            log.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_local(units: Sequence[WorkUnit], source: EditorSource, out: Path,
               record: Callable[[Mapping[str, Any]], None]) -> None:
    editor = _local_editor(source)
    for unit in units:
        for res in execute_unit(editor, unit, write_dir=str(out)):
            record(res)


def _local_editor(source: EditorSource) -> Editor:
    if isinstance(source, Editor):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load_model(str(source))
    if callable(source):
        return source()
    raise DiffDiffError(f"editor_or_model must be an Editor, a model path or a function, got {type(source).__name__}")


def _attach_bytes(unit: WorkUnit) -> Optional[str]:
    """Read a unit's input files for shipping; the one-line error if one cannot be read."""
    first = unit.rows[0]
    paths = [(first.image, "image")] + ([(first.source, "change map" if first.kind == "map" else "mask")]
                                         if first.kind != "source_prompt" else [])
    paths += [(first.settings[n], what) for n, what in ADDON_FILES.items() if first.settings.get(n) is not None]
    files: dict[str, bytes] = {}
    for path, what in paths:
        p = Path(path)
        if not p.exists():
            return f"{what} file '{p}' does not exist"
        if p.is_dir():
            return f"{what} path '{p}' is a directory, not an image file"
        try:
            files[path] = p.read_bytes()
        except OSError as exc:
            return f"{what} file '{p}' cannot be read ({exc.strerror})"
    unit.files = files
    return None


def _ray_pool() -> Any:
    """:mod:`diffdiff.batch_ray`, imported only when Ray is asked for (optional dependency; it never imports us)."""
    from . import batch_ray

    return batch_ray


def _run_ray(batch_ray: Any, units: Sequence[WorkUnit], source: EditorSource, out: Path,
             record: Callable[[Mapping[str, Any]], None], address: str, workers: Optional[int],
             shared_storage: bool) -> int:
    if isinstance(source, Editor):
        raise DiffDiffError("with ray, pass a model (path or hub id) or a picklable function returning an Editor: "
                            "each worker loads its own copy")
    factory: Callable[[], Editor] = (functools.partial(load_model, str(source))
                                     if isinstance(source, (str, os.PathLike)) else source)

    def on_done(unit: WorkUnit, results: list[dict[str, Any]]) -> None:
        unit.files = None  # done: the driver keeps no input bytes it no longer needs
        for res in results:
            pngs = res.pop("png", None)
            if res["status"] == "ok" and pngs is not None:
                row = next(r for r in unit.rows if r.id == res["id"])
                try:
                    for data, name in zip(pngs, row.outputs):
                        _write_bytes_atomic(data, out / name)
                except OSError as exc:
                    res = dict(res, status="error", output=None, outputs=[],
                               error=f"writing the output failed: {exc.strerror}")
            record(res)

    def on_lost(unit: WorkUnit, error: str) -> None:
        unit.files = None
        for row in unit.rows:
            record(_result(row, "error", row.seed, 0.0, error=error))

    work_fn = functools.partial(execute_unit, write_dir=str(out.resolve()) if shared_storage else None)
    return batch_ray.run_units(units, factory=factory, work_fn=work_fn, on_done=on_done, on_lost=on_lost,
                               address=address, workers=workers, prepare=None if shared_storage else _attach_bytes)
