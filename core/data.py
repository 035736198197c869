"""Finding a task's dataset: a local copy under `data.root`, else the Hub id in the task's YAML."""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import DatasetDict, load_dataset
from omegaconf import DictConfig

from core.task import UserError

log = logging.getLogger(__name__)


def local_folder(data: DictConfig) -> Path | None:
    """`<data.root>/<data.dir>` when a root is set (config or SUITE_DATA), checked to exist; None otherwise."""
    if not data.get("root"):
        return None
    folder = Path(str(data.root)).expanduser() / str(data.dir)
    if not folder.is_dir():
        raise UserError(f"data folder {folder} not found: set data.root=<dir> (or the SUITE_DATA environment "
                        f"variable) to the folder that holds {data.dir}/")
    return folder


def load_folder_or_hub(data: DictConfig, builder: str, what: str) -> dict:
    """{split: Dataset} of a local `builder` folder (imagefolder, audiofolder) at <data.root>/<data.dir>, or of the
    Hub dataset data.hub_id (its data.hub_splits); a missing or unreadable dataset is one UserError naming it."""
    folder = local_folder(data)
    try:
        if folder is not None:
            return dict(load_dataset(builder, data_dir=str(folder)))
        hub = load_dataset(str(data.hub_id), data.get("hub_config"))
        return {split: hub[name] for split, name in data.hub_splits.items()}
    except Exception as e:  # datasets raises many types for a missing or unreadable dataset
        where = folder if folder is not None else f"the Hub dataset {data.hub_id}"
        raise UserError(f"could not load {what} from {where} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


def check_utf8(path: Path) -> None:
    """Refuse a text data file that is not UTF-8, naming its line (Arrow would fail later, deep in a traceback)."""
    if path.suffix not in (".json", ".jsonl", ".csv", ".tsv", ".txt"):
        return
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path} is not UTF-8 text (line {line}: {e.reason}); save it as UTF-8") from None


def load_splits(data: DictConfig, optional: tuple[str, ...] = ()) -> DatasetDict:
    """Load the splits named in `data.files` (local) or `data.hub_splits` (Hub), columns renamed per `data.columns`.

    `data.columns` maps the names the task uses to the names in the data, e.g. {text: sentence, label: label}, so
    any dataset with the right kind of columns works (as the --text_column_name options of transformers' examples).
    Local files are read one split at a time, so a split may carry columns the others lack (a test split with
    several references per example); the task's `optional` fields (mapped to null, or absent from a split) may be
    missing.
    """
    folder = local_folder(data)
    if folder is not None:
        files = {split: folder / name for split, name in data.files.items()}
        for split, path in files.items():
            if not path.is_file():
                raise UserError(f"{split} file {path} not found (data.files.{split} in the task config)")
            check_utf8(path)
        try:  # one schema per split: one builder for all would refuse a split with other columns
            ds = DatasetDict({s: load_dataset(data.format, data_files={s: str(p)}, split=s) for s, p in files.items()})
        except Exception as e:  # datasets raises several types for unreadable files
            raise UserError(f"could not read the {data.dir} files in {folder}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None
    else:
        try:
            ds = load_dataset(str(data.hub_id), data.get("hub_config"))
        except Exception as e:
            raise UserError(f"no local copy of {data.dir} (data.root is unset) and the Hub dataset {data.hub_id} could "
                            f"not be loaded ({type(e).__name__}); set data.root=<dir> or SUITE_DATA to a folder "
                            f"holding {data.dir}/, or connect to the Hub") from None
        ds = DatasetDict({split: ds[name] for split, name in data.hub_splits.items()})
    return rename_columns(ds, dict(data.columns), optional)


def rename_columns(ds: DatasetDict, columns: dict[str, str | None], optional: tuple[str, ...] = ()) -> DatasetDict:
    """Each split's columns under the task's names; every field but the `optional` ones must be in every split."""
    out = {}
    for split, part in ds.items():
        absent = [src for dst, src in columns.items() if src not in part.column_names and dst not in optional]
        if absent:
            raise UserError(f"column(s) {absent} not in the {split} split (columns: {part.column_names}); "
                            f"name the right ones with data.columns.<field>=<column>")
        renames = {src: dst for dst, src in columns.items() if src in part.column_names and src != dst}
        out[split] = part.rename_columns(renames) if renames else part
    return DatasetDict(out)


def drop_empty(ds: DatasetDict, column: str) -> DatasetDict:
    """Skip rows whose `column` is empty or missing, and say how many per split."""
    def keep(row):  # a text, or a list of texts (several references) with at least one
        value = row[column]
        texts = value if isinstance(value, list) else [value]
        return any(t is not None and str(t).strip() != "" for t in texts)

    out = {}
    for split, part in ds.items():
        kept = part.filter(keep)
        if len(kept) < len(part):
            log.warning("skipped %d %s rows with empty %s", len(part) - len(kept), split, column)
        out[split] = kept
    return DatasetDict(out)
