"""Reading clinic patient lists (CSV or Parquet, any column names) into one frame of validated rows.

Row problems (a bad NHS number, an unreadable appointment date) stay on the row; problems with a file as a
whole raise `InputError`. Messages name the file, a row number and what is wrong, never a cell value: a
header-less file's first line is patient data, so header names are only quoted when they come from the job
configuration.
"""

from __future__ import annotations

import codecs
import csv
import glob
import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import polars.selectors as cs

from batch.nhs_number import WARNINGS, Profile, nhs_number_expr

MAX_LINE_BYTES = 1 << 20
# A list's shape is capped before its data is read: a few kB of CSV header or of Parquet (which stores a
# repeated value in a few bytes) can describe a frame that takes minutes or gigabytes to build. Real clinic
# lists are far below both caps.
MAX_COLUMNS = 1_000
MAX_ROWS = 5_000_000
ANNOTATE_ROWS = 50_000
_CHUNK_BYTES = 1 << 16

CSV_SUFFIXES = frozenset({".csv", ".txt", ".tsv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})

SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"
NHS_NUMBER = "_nhs_number"
NHS_REASON = "_nhs_reason"
NHS_WARNING = "_nhs_warning"
APPOINTMENT_DATE = "_appointment_date"
# Copies of the columns the job names for the reports people read and the audit trail (null when not named).
CLINIC = "_clinic"
PATIENT_NAME = "_patient_name"
DATE_OF_BIRTH = "_date_of_birth"
_NHS_STRUCT = "_nhs_check"
_NHS_FIELDS = {"nhs_number": NHS_NUMBER, "nhs_reason": NHS_REASON, "nhs_warning": NHS_WARNING}
INTERNAL_COLUMNS = (
    SOURCE_FILE,
    SOURCE_ROW,
    NHS_NUMBER,
    NHS_REASON,
    NHS_WARNING,
    APPOINTMENT_DATE,
    CLINIC,
    PATIENT_NAME,
    DATE_OF_BIRTH,
)

# Added by the run, not the reader: why a row is not queried although its number is valid (batch/selection.py).
WINDOW_REASON = "_window_reason"
RESERVED_COLUMNS = (*INTERNAL_COLUMNS, WINDOW_REASON)

DUPLICATE = WARNINGS["W_DUPLICATE"]
BAD_APPOINTMENT_DATE = "bad_appointment_date"

_BAD_DATE_FLAG = "__bad_appointment_date"
_DEFAULT_DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y")
_OTHER_DELIMITERS = (",", ";", "\t", "|")
_BLANK = " \t\r\n\ufeff"
_UTF8_BOM = b"\xef\xbb\xbf"
# Leading bytes of files that are sometimes saved with a .csv name but are not CSV text.
_NOT_TEXT_MAGIC = (
    (b"PAR1", "file holds Parquet data, not CSV text (name it .parquet)"),
    (b"PK\x03\x04", "file is a ZIP archive such as an Excel workbook, not CSV text (export it as CSV)"),
    (b"\xd0\xcf\x11\xe0", "file is an Excel 97-2003 workbook, not CSV text (export it as CSV)"),
    (b"\xff\xfe", "file is UTF-16 text (save it as UTF-8 CSV)"),
    (b"\xfe\xff", "file is UTF-16 text (save it as UTF-8 CSV)"),
)


@dataclass(frozen=True)
class InputSpec:
    """Where the data is in a list. `appointment_date_format` is a strptime format; None accepts
    ISO `YYYY-MM-DD` and `DD/MM/YYYY`."""

    nhs_number_column: str
    appointment_date_column: str | None = None
    appointment_date_format: str | None = None
    delimiter: str = ","
    encoding: str = "utf-8"
    clinic_column: str | None = None
    name_column: str | None = None
    date_of_birth_column: str | None = None
    window_days: int | None = None
    """Query only rows whose appointment is between today and today + N days (Europe/London)."""

    def context_columns(self) -> tuple[tuple[str, str], ...]:
        """(configured column, internal copy) for the optional columns the reports and audit show."""
        pairs = (
            (self.clinic_column, CLINIC),
            (self.name_column, PATIENT_NAME),
            (self.date_of_birth_column, DATE_OF_BIRTH),
        )
        return tuple((column, internal) for column, internal in pairs if column is not None)

    def __post_init__(self) -> None:
        if not self.nhs_number_column:
            raise ValueError("nhs_number_column must name a column")
        if self.window_days is not None and self.appointment_date_column is None:
            raise ValueError("window_days needs appointment_date_column: the window is of appointment dates")
        if len(self.delimiter) != 1 or not self.delimiter.isascii() or self.delimiter in '"\r\n':
            raise ValueError("delimiter must be one ASCII character other than '\"' or a line break")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"unknown encoding {self.encoding!r}") from None
        # Line and NUL scanning works on raw bytes, so every ASCII byte must mean itself (rules out UTF-16).
        ascii_bytes = bytes(range(128))
        try:
            ascii_compatible = ascii_bytes.decode(self.encoding) == ascii_bytes.decode("ascii")
        except UnicodeDecodeError:
            ascii_compatible = False
        if not ascii_compatible:
            raise ValueError(f"encoding {self.encoding!r} is not ASCII-compatible")


class InputError(Exception):
    """A list that cannot be read as a whole. `row` is the 1-based line in the file as an editor or
    spreadsheet numbers it (the header is row 1), or None when the problem has no single place."""

    def __init__(self, path: Path, row: int | None, reason: str) -> None:
        super().__init__(path, row, reason)
        self.path = Path(path)
        self.row = row
        self.reason = reason

    def __str__(self) -> str:
        where = f"{self.path}: row {self.row}" if self.row is not None else str(self.path)
        return f"{where}: {self.reason}"


def _os_error(path: Path, exc: OSError) -> InputError:
    if isinstance(exc, FileNotFoundError):
        return InputError(path, None, "file not found")
    if isinstance(exc, IsADirectoryError):
        return InputError(path, None, "is a directory, not a file")
    if isinstance(exc, PermissionError):
        return InputError(path, None, "cannot read file: permission denied")
    return InputError(path, None, f"cannot read file: {exc.strerror or type(exc).__name__}")


def _check_regular_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise _os_error(path, exc) from exc
    if stat.S_ISDIR(mode):
        raise InputError(path, None, "is a directory, not a file")
    if not stat.S_ISREG(mode):
        # Opening a FIFO or device could block or never end.
        raise InputError(path, None, "not a regular file")


def _list_suffix(path: Path) -> str:
    """The file's suffix, lowercased, when it names a list format we read; else InputError."""
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES | PARQUET_SUFFIXES:
        expected = ", ".join(sorted(CSV_SUFFIXES | PARQUET_SUFFIXES))
        raise InputError(path, None, f"unsupported file type '{suffix}' (expected {expected})")
    return suffix


def _check_readable(path: Path) -> None:
    _check_regular_file(path)
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise _os_error(path, exc) from exc


def resolve_inputs(pattern: str, base_dir: Path) -> list[Path]:
    """The files a job's input names: one path or a glob, relative to `base_dir` unless absolute, sorted.

    Directories matched by a glob are skipped; a glob must match at least one file.
    """
    if not pattern.strip():
        raise InputError(Path(pattern), None, "no input path given")
    given = Path(pattern)
    # Normalised so reports name "/data/lists/a.csv", not "/jobs/../lists/a.csv" (links are left alone).
    full = Path(os.path.normpath(given if given.is_absolute() else Path(base_dir) / given))
    if not any(char in pattern for char in "*?["):
        _check_readable(full)
        return [full]
    anchor = "" if given.is_absolute() else glob.escape(str(base_dir))
    found = sorted(
        Path(os.path.normpath(match)) for match in glob.glob(str(Path(anchor) / pattern), recursive=True)
    )
    files = [path for path in found if path.is_file()]
    if not files:
        raise InputError(full, None, "no files match this pattern")
    for path in files:
        _check_readable(path)
    return files


# --- CSV ----------------------------------------------------------------------------------------------


def _overflow_offset(chunk: bytes, carried: int) -> int | None:
    """Offset of the first byte in `chunk` that takes a line past MAX_LINE_BYTES, if any."""
    if carried + len(chunk) <= MAX_LINE_BYTES:
        return None
    start, used = 0, carried
    while True:
        end = chunk.find(b"\n", start)
        stop = len(chunk) if end < 0 else end
        if used + (stop - start) > MAX_LINE_BYTES:
            return start + (MAX_LINE_BYTES - used)
        if end < 0:
            return None
        start, used = end + 1, 0


def _too_many_columns(path: Path, row: int | None, width: int) -> InputError:
    return InputError(path, row, f"too many columns ({width}): a list may hold at most {MAX_COLUMNS}")


def _prescan_csv(path: Path, spec: InputSpec) -> None:
    """One streaming pass for what polars would report badly or only after loading everything: foreign
    binary formats, NUL bytes, bytes invalid in the configured encoding, over-long lines, more than
    MAX_ROWS lines after the header, no content."""
    decoder = codecs.getincrementaldecoder(spec.encoding)(errors="strict")
    not_text = f"bytes that are not valid {spec.encoding} text (is the file in another encoding?)"
    line = 1  # line number at the start of the current chunk
    carried = 0  # bytes of that line seen in earlier chunks
    has_content = False
    with path.open("rb") as handle:
        chunk = handle.read(_CHUNK_BYTES)
        for magic, reason in _NOT_TEXT_MAGIC:
            if chunk.startswith(magic):
                raise InputError(path, None, reason)
        while chunk:
            problems: list[tuple[int, str]] = []
            nul = chunk.find(b"\x00")
            if nul >= 0:
                problems.append((nul, "binary data (NUL byte), not CSV text"))
            overflow = _overflow_offset(chunk, carried)
            if overflow is not None:
                problems.append((overflow, f"line longer than {MAX_LINE_BYTES} bytes"))
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                # exc.start counts from the bytes the decoder held back from the previous chunk.
                problems.append((max(exc.start - pending, 0), not_text))
            else:
                has_content = has_content or bool(text.strip(_BLANK))
            if problems:
                offset, reason = min(problems)
                raise InputError(path, line + chunk.count(b"\n", 0, offset), reason)
            last_newline = chunk.rfind(b"\n")
            line += chunk.count(b"\n")
            carried = carried + len(chunk) if last_newline < 0 else len(chunk) - last_newline - 1
            # Lines, not records: a quoted cell may span lines, so this errs towards refusing at the cap.
            if line - 1 + (carried > 0) > MAX_ROWS + 1:
                raise InputError(
                    path, MAX_ROWS + 2, f"too many rows: a list may hold at most {MAX_ROWS} data rows"
                )
            chunk = handle.read(_CHUNK_BYTES)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InputError(path, line, not_text) from None
    if not has_content:
        raise InputError(path, None, "empty file")


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in {"utf-8", "utf-8-sig"}


def _text_encoding(spec: InputSpec) -> str:
    # Python's utf-8 codec would keep a byte order mark as part of the first header name.
    return "utf-8-sig" if _is_utf8(spec.encoding) else spec.encoding


def _first_line_width(path: Path, spec: InputSpec) -> int:
    with path.open(encoding=_text_encoding(spec), newline="") as handle:
        try:
            return len(next(csv.reader(handle, delimiter=spec.delimiter)))
        except (StopIteration, csv.Error):
            return 0


def _locate_bad_record(path: Path, spec: InputSpec, width: int) -> int | None:
    """Line of the first record Python's csv module cannot fit into `width` columns (best effort)."""
    with path.open(encoding=_text_encoding(spec), newline="") as handle:
        reader = csv.reader(handle, delimiter=spec.delimiter, strict=True)
        try:
            for record in reader:
                if len(record) > width:
                    return reader.line_num
        except csv.Error:
            return reader.line_num
    return None


def _delimiter_hint(names: list[str], spec: InputSpec) -> str:
    if len(names) != 1:
        return ""
    for other in _OTHER_DELIMITERS:
        if other != spec.delimiter and other in names[0]:
            shown = "tab" if other == "\t" else f"'{other}'"
            return f"; wrong delimiter? found {shown}"
    return ""


def _header_names(cells: Sequence[str | None]) -> list[str]:
    # Spreadsheet exports often end rows with empty cells; give those columns a stable positional name.
    return [cell if cell else f"_unnamed_{position}" for position, cell in enumerate(cells, start=1)]


def _read_csv(path: Path, spec: InputSpec) -> tuple[pl.DataFrame, int | None]:
    _prescan_csv(path, spec)
    # Only the first record is parsed here, so a very wide header is refused before polars builds a frame.
    width = _first_line_width(path, spec)
    if width > MAX_COLUMNS:
        raise _too_many_columns(path, 1, width)
    source: Path | io.BytesIO = path
    if not _is_utf8(spec.encoding):
        # polars reads UTF-8 only; lists are small, so transcoding in memory is fine.
        source = io.BytesIO(path.read_bytes().decode(spec.encoding).encode("utf-8"))
    try:
        # The header is read as data so that duplicate names reach us instead of being renamed by polars.
        # low_memory: a 1M-row list peaks at 264 MiB instead of 290-300, for 0.6 s more reading.
        raw = pl.read_csv(
            source,
            has_header=False,
            infer_schema=False,
            separator=spec.delimiter,
            quote_char='"',
            encoding="utf8",
            raise_if_empty=True,
            truncate_ragged_lines=False,
            glob=False,
            low_memory=True,
        )
    except pl.exceptions.NoDataError:
        raise InputError(path, None, "empty file") from None
    except pl.exceptions.PolarsError:
        # polars quotes the offending text in its message: never chain it.
        width = _first_line_width(path, spec)
        row = _locate_bad_record(path, spec, width) if width else None
        raise InputError(
            path, row, "malformed CSV: more fields than the header, or an unbalanced quote"
        ) from None
    if raw.width > MAX_COLUMNS:
        # Python's csv module and polars could split an oddly quoted header differently.
        raise _too_many_columns(path, 1, raw.width)
    names = _header_names(raw.row(0))
    _check_duplicate_names(path, names, header_row=1)
    # One chunk per column (the parallel reader leaves dozens), as the reader's own columns will be: columns
    # chunked differently would be copied whole by every later select. A column at a time, each old one freed
    # as its copy is made, so the list is never held twice.
    frame = pl.DataFrame([raw.drop_in_place(name).slice(1).rechunk() for name in list(raw.columns)])
    frame.columns = names
    return frame, 1


def _check_duplicate_names(path: Path, names: list[str], header_row: int | None) -> None:
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if name in seen:
            raise InputError(
                path, header_row, f"duplicate column names (columns {seen[name]} and {position})"
            )
        seen[name] = position


# --- Parquet ------------------------------------------------------------------------------------------


_UNREADABLE_PARQUET = "not a readable Parquet file (corrupt or truncated)"


def _parquet_schema(path: Path, spec: InputSpec) -> tuple[pl.LazyFrame, pl.Schema]:
    """The file's scan and schema, from its footer alone, with the NHS number column's and every column's type
    checked."""
    scan = pl.scan_parquet(path, glob=False, hive_partitioning=False)
    try:
        schema = scan.collect_schema()
    except pl.exceptions.DuplicateError:
        raise InputError(path, None, "duplicate column names") from None
    except pl.exceptions.PolarsError:
        raise InputError(path, None, _UNREADABLE_PARQUET) from None
    if len(schema) > MAX_COLUMNS:
        raise _too_many_columns(path, None, len(schema))
    name = _match_column(schema.names(), spec.nhs_number_column)
    if name is not None:
        dtype = schema[name]
        if dtype.is_numeric():
            raise InputError(
                path,
                None,
                f"column '{name}' is {dtype}: NHS numbers must be stored as text "
                "(leading zeros and digits may have been lost)",
            )
        if not (dtype in (pl.String, pl.Null) or isinstance(dtype, pl.Categorical | pl.Enum)):
            raise InputError(path, None, f"column '{name}' is {dtype}: NHS numbers must be stored as text")
    for column, dtype in schema.items():
        if not _textual(dtype):
            raise InputError(path, None, f"column '{column}' is {_type_name(dtype)}: {_unreportable(dtype)}")
    return scan, schema


def _read_parquet(path: Path, spec: InputSpec) -> tuple[pl.DataFrame, int | None]:
    # One scan: its schema and row count come from the footer, so both caps hold before any data is read.
    scan, _ = _parquet_schema(path, spec)
    try:
        rows = scan.select(pl.len()).collect().item()
        if rows > MAX_ROWS:
            raise InputError(
                path, None, f"too many rows ({rows}): a list may hold at most {MAX_ROWS} data rows"
            )
        frame = scan.collect()
    except pl.exceptions.PolarsError:
        raise InputError(path, None, _UNREADABLE_PARQUET) from None
    return frame, None


def _textual(dtype: pl.DataType) -> bool:
    """Types whose text form keeps everything the value said. Only these are read: every input column is
    reported as text, and polars cannot write the others (nested, binary, durations) to CSV at all."""
    if dtype.is_numeric() or dtype in (pl.String, pl.Null, pl.Boolean, pl.Date, pl.Time):
        return True
    return isinstance(dtype, pl.Datetime | pl.Categorical | pl.Enum)


def _type_name(dtype: pl.DataType) -> str:
    # A nested type's full name lists every field, which can be long; the kind is what the reader needs.
    return str(dtype.base_type()) if dtype.is_nested() else str(dtype)


def _unreportable(dtype: pl.DataType) -> str:
    if dtype.is_nested() or dtype in (pl.Binary, pl.Object):
        return "nested or binary columns cannot be reported"
    return "only text, number, date, time and true/false columns can be reported"


# --- per-file annotation --------------------------------------------------------------------------------


def _match_column(names: list[str], wanted: str) -> str | None:
    """Exact name, else the one name equal to it ignoring case and surrounding spaces."""
    if wanted in names:
        return wanted
    key = wanted.strip().casefold()
    close = [name for name in names if name.strip().casefold() == key]
    return close[0] if len(close) == 1 else None


def _input_column(name: str) -> pl.Expr:
    # pl.col reads "*" and "^...$" as patterns; a list's own column names must only ever mean themselves.
    return cs.by_name(name).as_expr()


def _appointment_date(column: str, dtype: pl.DataType, fmt: str | None) -> pl.Expr:
    source = _input_column(column)
    if dtype == pl.Date:
        return source
    if isinstance(dtype, pl.Datetime):
        return source.dt.date()
    text = source.cast(pl.String).str.strip_chars()
    formats = (fmt,) if fmt else _DEFAULT_DATE_FORMATS
    return pl.coalesce([text.str.strptime(pl.Date, f, strict=False) for f in formats])


def _locate_columns(
    names: list[str], path: Path, header_row: int | None, spec: InputSpec
) -> tuple[str, str | None, list[tuple[str, str]]]:
    """The list's names for the configured columns: NHS number, appointment date, and (found, internal) for
    the optional context columns. Raises InputError naming the first configured column not found."""
    nhs_column = _match_column(names, spec.nhs_number_column)
    if nhs_column is None:
        hint = _delimiter_hint(names, spec)
        raise InputError(path, header_row, f"column '{spec.nhs_number_column}' not found{hint}")
    date_column = None
    if spec.appointment_date_column is not None:
        date_column = _match_column(names, spec.appointment_date_column)
        if date_column is None:
            raise InputError(path, header_row, f"column '{spec.appointment_date_column}' not found")
    context: list[tuple[str, str]] = []
    for wanted, internal in spec.context_columns():
        found = _match_column(names, wanted)
        if found is None:
            raise InputError(path, header_row, f"column '{wanted}' not found")
        context.append((found, internal))
    return nhs_column, date_column, context


def _annotate(
    frame: pl.DataFrame, path: Path, header_row: int | None, spec: InputSpec, profile: Profile
) -> pl.DataFrame:
    names = frame.columns
    for name in names:
        if name in RESERVED_COLUMNS or name == _BAD_DATE_FLAG:
            raise InputError(
                path, header_row, f"column name '{name}' is reserved for the reader's own columns"
            )
    nhs_column, date_column, context = _locate_columns(names, path, header_row, spec)

    # Row numbers count every data record, so blank lines dropped below still leave later rows numbered
    # as they are in the file.
    frame = frame.with_columns(pl.int_range(1, frame.height + 1, dtype=pl.Int64).alias(SOURCE_ROW))
    blank = frame.select(pl.all_horizontal(cs.by_name(names).is_null()).any()).item()
    if blank:  # filtering copies every column, so only when there is a blank line to drop
        frame = frame.filter(~pl.all_horizontal(cs.by_name(names).is_null()))
    if frame.height == 0:
        raise InputError(path, None, "no data rows (header only)")

    if date_column is not None:
        parsed = _appointment_date(date_column, frame.schema[date_column], spec.appointment_date_format)
        # A blank cell is a missing date, not a bad one.
        given = _input_column(date_column).cast(pl.String).str.strip_chars().str.len_chars() > 0
        date_exprs = [parsed.alias(APPOINTMENT_DATE), (parsed.is_null() & given).alias(_BAD_DATE_FLAG)]
    else:
        date_exprs = [pl.lit(None, pl.Date).alias(APPOINTMENT_DATE), pl.lit(False).alias(_BAD_DATE_FLAG)]

    nhs = nhs_number_expr(_input_column(nhs_column).cast(pl.String), profile)
    # Worked out on just the columns read: polars plans every expression against the whole schema, so on a
    # wide list the NHS number expression alone would cost time in proportion to the number of columns.
    used = list(
        dict.fromkeys(
            name for name in (nhs_column, date_column, *(c for c, _ in context)) if name is not None
        )
    )
    copied = {internal: found for found, internal in context}
    exprs = [
        pl.lit(str(path), pl.String).alias(SOURCE_FILE),
        nhs.alias(_NHS_STRUCT),
        *date_exprs,
        *(
            _input_column(copied[internal]).cast(pl.String).alias(internal)
            if internal in copied
            else pl.lit(None, pl.String).alias(internal)
            for internal in (CLINIC, PATIENT_NAME, DATE_OF_BIRTH)
        ),
    ]
    # In slices of rows: the NHS number check works through several string columns per row, so a whole
    # million-row list at once held hundreds of MiB of intermediates. The struct is computed once and unnested.
    annotations = pl.concat(
        [
            part.select(exprs).unnest(_NHS_STRUCT).rename(_NHS_FIELDS)
            for part in frame.select(cs.by_name(used)).iter_slices(ANNOTATE_ROWS)
        ],
        # One chunk, like the columns read: a frame whose columns are chunked differently is copied whole by
        # every later select.
        rechunk=True,
    )
    # One cast for all columns: a DataFrame.schema lookup per column (which builds the whole schema each
    # time) made 20,000 columns take minutes. Every column is textual; the readers refuse the rest.
    schema = frame.schema
    if any(schema[name] != pl.String for name in names):
        frame = frame.with_columns(cs.by_name(names).cast(pl.String))  # even a no-op cast copies every column
    return frame.hstack(annotations)


def read_patient_lists(
    paths: Sequence[Path], spec: InputSpec, profile: Profile = "simulated"
) -> pl.DataFrame:
    """One row per data row of every list, original columns (as Utf8) plus internal columns.

    `_nhs_warning` is a comma-joined list: `float_suffix`, `duplicate` (the same valid number on an earlier
    row of any list in this call) and `bad_appointment_date` (a non-empty date that does not parse).
    """
    if not paths:
        raise ValueError("no input files")
    annotated: list[tuple[Path, pl.DataFrame]] = []
    for given in paths:
        path = Path(given)
        suffix = _list_suffix(path)
        _check_regular_file(path)
        try:
            frame, header_row = _read_csv(path, spec) if suffix in CSV_SUFFIXES else _read_parquet(path, spec)
        except OSError as exc:
            raise _os_error(path, exc) from exc
        annotated.append((path, _annotate(frame, path, header_row, spec, profile)))

    frames = [frame for _, frame in annotated]
    # concat copies every column, even of a single frame.
    combined = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
    combined = combined.with_columns(_warnings(combined))
    originals = [name for name in combined.columns if name not in INTERNAL_COLUMNS and name != _BAD_DATE_FLAG]
    return combined.select(cs.by_name(*originals, *INTERNAL_COLUMNS))


def _warnings(frame: pl.DataFrame) -> pl.Series:
    """`_nhs_warning` with `duplicate` and `bad_appointment_date` joined on.

    Only the rows with a warning are joined, in Python, and scattered into an otherwise null column: string
    expressions over every row (concat_str, even fill_null) held 150 MiB or more for a million-row list,
    where few rows have a warning at all.
    """
    number = pl.col(NHS_NUMBER)
    flagged = frame.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"),
        pl.col(NHS_WARNING).alias("warning"),
        (number.is_not_null() & ~number.is_first_distinct()).alias("duplicate"),
        pl.col(_BAD_DATE_FLAG).alias("bad_date"),
    ).filter(pl.col("warning").is_not_null() | pl.col("duplicate") | pl.col("bad_date"))
    joined = [
        ",".join(
            part
            for part in (
                warning,
                DUPLICATE if duplicate else None,
                BAD_APPOINTMENT_DATE if bad_date else None,
            )
            if part
        )
        for warning, duplicate, bad_date in flagged.select("warning", "duplicate", "bad_date").iter_rows()
    ]
    column = pl.Series(NHS_WARNING, dtype=pl.String).extend_constant(None, frame.height)
    return column.scatter(flagged["row"], pl.Series(joined, dtype=pl.String)) if joined else column


# --- header only (cpis-batch check) ---------------------------------------------------------------------


@dataclass(frozen=True)
class ListHeader:
    """What `read_list_header` found: counts only (a header-less file's first line would be patient data)."""

    path: Path
    kind: str
    """`CSV` or `Parquet`."""
    columns: int


def _csv_header_names(path: Path, spec: InputSpec) -> tuple[list[str], int]:
    with path.open("rb") as handle:
        head = handle.read(MAX_LINE_BYTES + 1)
    for magic, reason in _NOT_TEXT_MAGIC:
        if head.startswith(magic):
            raise InputError(path, None, reason)
    if not head.removeprefix(_UTF8_BOM).strip(b" \t\r\n"):
        raise InputError(path, None, "empty file")
    # The reader takes the first line as the header, blank or not.
    row, end = 1, head.find(b"\n")
    if end < 0 and len(head) > MAX_LINE_BYTES:
        raise InputError(path, row, f"line longer than {MAX_LINE_BYTES} bytes")
    raw = head[: end if end >= 0 else len(head)]
    if _is_utf8(spec.encoding):
        raw = raw.removeprefix(_UTF8_BOM)
    if b"\x00" in raw:
        raise InputError(path, row, "binary data (NUL byte), not CSV text")
    try:
        text = raw.decode(_text_encoding(spec))
    except UnicodeDecodeError:
        raise InputError(
            path, row, f"bytes that are not valid {spec.encoding} text (is the file in another encoding?)"
        ) from None
    cells = next(csv.reader([text.rstrip("\r")], delimiter=spec.delimiter), [])
    if len(cells) > MAX_COLUMNS:
        raise _too_many_columns(path, row, len(cells))
    names = _header_names(cells)
    _check_duplicate_names(path, names, header_row=row)
    return names, row


def read_list_header(path: Path, spec: InputSpec) -> ListHeader:
    """Check one list as far as its CSV header or Parquet schema goes, reading no data row: a supported,
    readable regular file, its column count, duplicate names, every configured column present (and, for
    Parquet, column types). Raises InputError as `read_patient_lists` would."""
    path = Path(path)
    suffix = _list_suffix(path)
    _check_readable(path)
    try:
        if suffix in CSV_SUFFIXES:
            (names, header_row), kind = _csv_header_names(path, spec), "CSV"
        else:
            names, header_row, kind = _parquet_schema(path, spec)[1].names(), None, "Parquet"
    except OSError as exc:
        raise _os_error(path, exc) from exc
    _locate_columns(names, path, header_row, spec)
    return ListHeader(path, kind, len(names))
