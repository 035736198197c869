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


def load_splits(data: DictConfig) -> DatasetDict:
    """Load the splits named in `data.files` (local) or `data.hub_splits` (Hub), columns renamed per `data.columns`.

    `data.columns` maps the names the task uses to the names in the data, e.g. {text: sentence, label: label}, so
    any dataset with the right kind of columns works (as the --text_column_name options of transformers' examples).
    """
    folder = local_folder(data)
    if folder is not None:
        files = {split: folder / name for split, name in data.files.items()}
        for split, path in files.items():
            if not path.is_file():
                raise UserError(f"{split} file {path} not found (data.files.{split} in the task config)")
        try:
            ds = load_dataset(data.format, data_files={s: str(p) for s, p in files.items()})
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
    return rename_columns(ds, dict(data.columns))


def rename_columns(ds: DatasetDict, columns: dict[str, str]) -> DatasetDict:
    for split, part in ds.items():
        absent = [src for src in columns.values() if src not in part.column_names]
        if absent:
            raise UserError(f"column(s) {absent} not in the {split} split (columns: {part.column_names}); "
                            f"name the right ones with data.columns.<field>=<column>")
    renames = {src: dst for dst, src in columns.items() if src != dst}
    return ds.rename_columns(renames) if renames else ds


def drop_empty(ds: DatasetDict, column: str) -> DatasetDict:
    """Skip rows whose `column` is empty or missing, and say how many per split."""
    def keep(row):
        return row[column] is not None and str(row[column]).strip() != ""

    out = {}
    for split, part in ds.items():
        kept = part.filter(keep)
        if len(kept) < len(part):
            log.warning("skipped %d %s rows with empty %s", len(part) - len(kept), split, column)
        out[split] = kept
    return DatasetDict(out)
