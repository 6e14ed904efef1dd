"""The source-adapter interface: lines of a real flow-log format in, canonical flowlog.v1 rows out.

Every adapter is a :class:`LineAdapter`: it declares the Arrow schema of its raw
JSON records and maps a raw table to canonical columns with pyarrow compute
functions. Parsing is vectorised: a whole block of lines goes through Arrow's
JSON reader with that explicit schema, which refuses wrong types instead of
coercing them. A block that fails is bisected until the bad lines are
isolated; each bad line becomes a :class:`~pipeline.conform.Reject` carrying
its line number, the reason and its original bytes. ``parse`` never raises for
bad input, and every non-blank line ends up either in the table, in
``rejects`` or counted in ``skipped`` (records a format defines as not being a
flow of their own, such as Hubble replies).
"""

from __future__ import annotations

import functools
import io
import ipaddress
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from pipeline.conform import ConformResult, Reject, conform_table
from pipeline.schema import FLOWLOG, arrow_schema

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20
# What a dead letter keeps of a line that is too long to be a flow record.
KEEP_OF_LONG_LINE = 64 << 10
# Below this many lines a failed block is parsed line by line instead of bisected further.
_PER_LINE = 8


def long_line_reject(line: bytes, limit: int, line_number: int) -> Reject:
    """A line over the size limit: dead-lettered with its start, never parsed."""
    return Reject(f"line of {len(line):,} bytes is longer than the limit of {limit:,} "
                  f"(first {KEEP_OF_LONG_LINE:,} bytes kept)", row=line_number, raw=bytes(line[:KEEP_OF_LONG_LINE]))


@dataclass
class SourceBatch(ConformResult):
    """A conformed batch plus the accounting of the lines it came from."""

    lines: int = 0  # non-blank lines given to the adapter
    skipped: int = 0  # well-formed records the format says are not flows of their own

    @property
    def accounted(self) -> int:
        return self.table.num_rows + len(self.rejects) + self.skipped


@dataclass
class Mapped:
    """Canonical columns of a raw table, plus per-row verdicts of the mapping itself."""

    columns: dict[str, pa.Array | pa.ChunkedArray]
    reasons: np.ndarray | None = None  # object array: a reason where the row cannot be mapped, else None
    skip: np.ndarray | None = None  # bool array: rows deliberately left out (counted, not rejected)


class LineAdapter(ABC):
    """Maps lines of one flow-log format to canonical flowlog.v1 rows (see module docstring)."""

    name: str = ""
    #: Arrow schema of the raw records, one per dialect of the format (see ``dialect``).
    raw_schemas: tuple[pa.Schema, ...] = ()

    def __init__(self, cluster: str = "default", host: str | None = None,
                 max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.cluster = cluster or "default"
        self.host = host
        self.max_line_bytes = max_line_bytes

    # -- what an adapter provides ------------------------------------------------

    def dialect(self, line: bytes) -> int:
        """Which of ``raw_schemas`` a line is written in (formats with one shape need not override)."""
        return 0

    def repair(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """A lenient rewrite of a record the strict schema refused (e.g. ``"-"`` for a number), or None."""
        return None

    @abstractmethod
    def map(self, raw: pa.Table, dialect: int) -> Mapped:
        """Canonical columns for a raw table; missing columns become nulls."""

    # -- the shared machinery ----------------------------------------------------

    def parse(self, lines: Sequence[bytes], first_line: int = 1) -> SourceBatch:
        """Map lines (without their newline); rejects carry ``row`` = line number (``first_line`` + index)."""
        rejects: list[Reject] = []
        skipped = 0
        groups: dict[int, Sequence[int]] = {}
        if self._one_dialect and _plain_lines(lines, self.max_line_bytes):
            nonblank = len(lines)
            if nonblank:
                groups[0] = range(nonblank)
        else:
            groups = self._group(lines, first_line, rejects)
            nonblank = sum(1 for line in lines if line.strip())
        tables: list[pa.Table] = []
        origins: list[np.ndarray] = []
        for dialect, idx in sorted(groups.items()):
            pieces, bad = self._read(lines, idx, self.raw_schemas[dialect])
            rejects += [Reject(reason, row=first_line + i, raw=bytes(lines[i])) for i, reason in bad]
            if not pieces:
                continue
            raw = pa.concat_tables([t for t, _ in pieces])
            where = np.concatenate([np.asarray(ix, dtype=np.int64) for _, ix in pieces])
            try:
                mapped = self.map(raw, dialect)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError, OverflowError) as exc:
                # A batch the vectorised mapping cannot handle as a whole: map its rows one by one.
                log.warning("%s: mapping %d records failed as a batch (%s); mapping them one by one",
                            self.name, raw.num_rows, _one_line(exc))
                table, where, row_rejects, row_skipped = self._map_rows(raw, where, dialect, lines, first_line, exc)
                rejects += row_rejects
                skipped += row_skipped
                if table is not None:
                    tables.append(table)
                    origins.append(where)
                continue
            table, keep_where, more, n_skip = self._finish(raw.num_rows, mapped, where, lines, first_line)
            rejects += more
            skipped += n_skip
            tables.append(table)
            origins.append(keep_where)
        target = arrow_schema(FLOWLOG)
        if tables:
            table = pa.concat_tables(tables)
            where = np.concatenate(origins)
            if len(tables) > 1:
                order = np.argsort(where, kind="stable")
                table = table.take(pa.array(order))
                where = where[order]
            result = conform_table(table, FLOWLOG)
            if result.rejects:
                rejects += [Reject(r.reason, row=first_line + int(where[r.row]), raw=bytes(lines[int(where[r.row])]))
                            for r in result.rejects]
            out = result.table
        else:
            out = target.empty_table()
        rejects.sort(key=lambda r: r.row or 0)
        return SourceBatch(out, rejects, lines=nonblank, skipped=skipped)

    @property
    def _one_dialect(self) -> bool:
        return len(self.raw_schemas) == 1 and type(self).dialect is LineAdapter.dialect

    def _group(self, lines: Sequence[bytes], first_line: int, rejects: list[Reject]) -> dict[int, Sequence[int]]:
        """Indices of the non-blank lines per dialect; over-long lines become rejects."""
        groups: dict[int, list[int]] = {}
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            if len(line) > self.max_line_bytes:
                rejects.append(long_line_reject(line, self.max_line_bytes, first_line + i))
                continue
            try:
                d = self.dialect(line)
            except Exception:  # a dialect probe must not decide the fate of a record; the schema will
                d = 0
            groups.setdefault(d, []).append(i)
        return groups

    def _finish(self, n: int, mapped: Mapped, where: np.ndarray, lines: Sequence[bytes],
                first_line: int) -> tuple[pa.Table, np.ndarray, list[Reject], int]:
        table = canonical_table(mapped.columns, n, self.cluster)
        drop = np.zeros(n, dtype=bool)
        rejects: list[Reject] = []
        n_skip = 0
        if mapped.reasons is not None:
            bad = np.flatnonzero(mapped.reasons != None)  # noqa: E711 (element-wise)
            rejects = [Reject(str(mapped.reasons[j]), row=first_line + int(where[j]), raw=bytes(lines[int(where[j])]))
                       for j in bad]
            drop[bad] = True
        if mapped.skip is not None:
            skip = np.logical_and(mapped.skip, ~drop)
            n_skip = int(skip.sum())
            drop |= skip
        if drop.any():
            table = table.filter(pa.array(~drop))
            where = where[~drop]
        return table, where, rejects, n_skip

    def _map_rows(self, raw: pa.Table, where: np.ndarray, dialect: int, lines: Sequence[bytes], first_line: int,
                  exc: Exception) -> tuple[pa.Table | None, np.ndarray, list[Reject], int]:
        tables, keep, rejects, skipped = [], [], [], 0
        for j in range(raw.num_rows):
            try:
                mapped = self.map(raw.slice(j, 1), dialect)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError, OverflowError) as e:
                rejects.append(Reject(f"cannot map record: {_one_line(e)}", row=first_line + int(where[j]),
                                      raw=bytes(lines[int(where[j])])))
                continue
            t, w, more, n = self._finish(1, mapped, where[j:j + 1], lines, first_line)
            rejects += more
            skipped += n
            if t.num_rows:
                tables.append(t)
                keep.append(w)
        if not tables:
            return None, np.zeros(0, np.int64), rejects, skipped
        return pa.concat_tables(tables), np.concatenate(keep), rejects, skipped

    def _read(self, lines: Sequence[bytes], idx: Sequence[int], schema: pa.Schema
              ) -> tuple[list[tuple[pa.Table, Sequence[int]]], list[tuple[int, str]]]:
        """Parse the lines at ``idx``; returns (tables with the line indices of their rows, bad lines with reasons)."""
        whole = isinstance(idx, range) and len(idx) == len(lines)
        table = _read_block(b"\n".join(lines if whole else (lines[i] for i in idx)), schema, len(idx))
        if table is not None:
            return [(table, idx)], []
        if len(idx) <= _PER_LINE:
            pieces, bad = [], []
            for i in idx:
                t, reason = self._read_line(lines[i], schema)
                if t is None:
                    bad.append((i, reason))
                else:
                    pieces.append((t, [i]))
            return pieces, bad
        mid = len(idx) // 2
        left, bad_left = self._read(lines, idx[:mid], schema)
        right, bad_right = self._read(lines, idx[mid:], schema)
        return left + right, bad_left + bad_right

    def _read_line(self, line: bytes, schema: pa.Schema) -> tuple[pa.Table | None, str]:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return None, f"invalid JSON: {exc}"
        if not isinstance(record, dict):
            return None, f"record is not a JSON object but {type(record).__name__}"
        try:
            return _read_strict(line, schema), ""
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, ValueError) as exc:
            reason = _one_line(exc)
        fixed = self.repair(record)
        if fixed is not None:
            try:
                return _read_strict(orjson.dumps(fixed), schema), ""
            except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, ValueError, TypeError):
                pass
        return None, reason


def _plain_lines(lines: Sequence[bytes], limit: int) -> bool:
    """The common case, checked without a Python loop per line: no blank and no over-long line."""
    try:
        return all(map(bytes.strip, lines)) and max(map(len, lines), default=0) <= limit
    except TypeError:  # not bytes (a bytearray or memoryview): the per-line path handles it
        return False


def _read_strict(block: bytes, schema: pa.Schema, rows: int = 1) -> pa.Table:
    if not block.isascii():
        block.decode("utf-8")  # Arrow's reader does not validate UTF-8
    table = pj.read_json(io.BytesIO(block), read_options=_read_options(len(block)),
                         parse_options=_parse_options(schema))
    if table.num_rows != rows:
        raise ValueError(f"expected {rows} JSON object(s), found {table.num_rows}")
    return table


def _read_block(block: bytes, schema: pa.Schema, rows: int) -> pa.Table | None:
    try:
        return _read_strict(block, schema, rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, ValueError):
        return None


@functools.lru_cache(maxsize=64)
def _parse_options(schema: pa.Schema) -> pj.ParseOptions:
    return pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")


def _read_options(nbytes: int) -> pj.ReadOptions:
    # One block for the whole buffer: a record never straddles blocks, and one core does the work.
    return pj.ReadOptions(use_threads=False, block_size=max(1 << 16, nbytes + 1))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.removeprefix("JSON parse error: ")
    for suffix in (" in row 0",):
        text = text.removesuffix(suffix)
    if isinstance(exc, UnicodeDecodeError):
        return f"invalid UTF-8 at byte {exc.start}"
    return text[:300]


def canonical_table(columns: dict[str, Any], n: int, cluster: str) -> pa.Table:
    """A table with every flowlog.v1 column (nulls where the adapter had nothing), cast to the schema's types."""
    target = arrow_schema(FLOWLOG)
    arrays = []
    for f in target:
        col = columns.get(f.name)
        if col is None:
            col = pa.array([cluster] * n, pa.string()) if f.name == "cluster" else pa.nulls(n, f.type)
        elif isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if not col.type.equals(f.type):
            col = col.cast(f.type)
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=pa.schema([pa.field(f.name, f.type) for f in target]))


# -- vectorised helpers shared by the adapters ---------------------------------------


def field(table_or_struct: pa.Table | pa.Array | pa.ChunkedArray, *path: str) -> pa.Array:
    """A (nested) field as one Array; a struct that is null makes its children null."""
    col = table_or_struct.column(path[0]) if isinstance(table_or_struct, pa.Table) else \
        pc.struct_field(table_or_struct, path[0])
    for name in path[1:]:
        col = pc.struct_field(col, name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def nullify(arr: pa.Array, placeholders: tuple[str, ...] = ("-", "")) -> pa.Array:
    """Strings that stand for "not applicable" become null."""
    return pc.if_else(pc.is_in(arr, value_set=pa.array(placeholders, arr.type)), pa.scalar(None, arr.type), arr)


def lookup(arr: pa.Array, mapping: dict[Any, Any], out_type: pa.DataType = pa.string()) -> pa.Array:
    """Map values through a dictionary; values not in it become null."""
    keys = pa.array(list(mapping), arr.type)
    values = pa.array(list(mapping.values()), out_type)
    return values.take(pc.index_in(arr, value_set=keys))


PROTO_NAMES = {"1": "icmp", "6": "tcp", "17": "udp", "58": "icmp6", "132": "sctp", "icmpv4": "icmp",
               "icmpv6": "icmp6", "ipv6-icmp": "icmp6"}


def proto_names(arr: pa.Array) -> pa.Array:
    """Lower-case protocol names; IANA numbers of the common protocols become their names."""
    lower = pc.utf8_lower(pc.utf8_trim_whitespace(arr))
    return pc.coalesce(lookup(lower, PROTO_NAMES), nullify(lower, ("",)))


def labels_map(labels: pa.Array, strip_prefix: str = "", drop_prefixes: tuple[str, ...] = (),
               empty_as_null: bool = False) -> tuple[pa.Array, np.ndarray]:
    """``["k=v", …]`` lists → map<string, string>; returns (map, rows holding a null label).

    A label without ``=`` becomes a key with an empty value. ``strip_prefix`` is removed
    from the front of labels (Hubble's ``k8s:``); labels starting with one of
    ``drop_prefixes`` (after stripping) are left out.
    """
    if isinstance(labels, pa.ChunkedArray):
        labels = labels.combine_chunks()
    n = len(labels)
    flat = labels.flatten()
    parents = pc.list_parent_indices(labels).to_numpy(zero_copy_only=False) if len(flat) else np.zeros(0, np.int64)
    bad_rows = np.zeros(n, dtype=bool)
    null_items = pc.is_null(flat).to_numpy(zero_copy_only=False) if len(flat) else np.zeros(0, bool)
    if null_items.any():
        bad_rows[parents[null_items]] = True
    keep = ~null_items
    if strip_prefix and len(flat):
        flat = pc.if_else(pc.starts_with(flat, strip_prefix),
                          pc.utf8_slice_codeunits(flat, len(strip_prefix)), flat)
    for prefix in drop_prefixes:
        if len(flat):
            keep &= ~pc.fill_null(pc.starts_with(flat, prefix), False).to_numpy(zero_copy_only=False)
    flat = flat.filter(pa.array(keep))
    parents = parents[keep]
    with_eq = pc.if_else(pc.match_substring(flat, "="), flat, pc.binary_join_element_wise(flat, "", "="))
    pairs = pc.split_pattern(with_eq, "=", max_splits=1).flatten()
    keys = pairs.take(pa.array(np.arange(0, len(pairs), 2)))
    values = pairs.take(pa.array(np.arange(1, len(pairs), 2)))
    counts = np.bincount(parents, minlength=n) if len(parents) else np.zeros(n, np.int64)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    null_rows = pc.is_null(labels).to_numpy(zero_copy_only=False)
    if empty_as_null:
        null_rows = null_rows | (counts == 0)
    mask = np.concatenate([null_rows, [False]])
    return pa.MapArray.from_arrays(pa.array(offsets, pa.int32(), mask=mask), keys, values), bad_rows


def concat_lists(*lists: pa.Array) -> pa.Array:
    """Row-wise concatenation of list<string> arrays; a row is null when it is null in all of them."""
    n = len(lists[0])
    flats, parents, order = [], [], []
    for k, arr in enumerate(lists):
        flat = arr.flatten()
        flats.append(flat)
        parents.append(pc.list_parent_indices(arr).to_numpy(zero_copy_only=False) if len(flat) else np.zeros(0, np.int64))
        order.append(np.full(len(flat), k))
    flat = pa.concat_arrays([f.cast(pa.string()) for f in flats]) if flats else pa.array([], pa.string())
    parent = np.concatenate(parents)
    sort = np.lexsort((np.concatenate(order), parent)) if len(parent) else np.zeros(0, np.int64)
    flat = flat.take(pa.array(sort))
    counts = np.bincount(parent, minlength=n) if len(parent) else np.zeros(n, np.int64)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    all_null = np.ones(n, dtype=bool)
    for arr in lists:
        all_null &= pc.is_null(arr).to_numpy(zero_copy_only=False)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32(), mask=np.concatenate([all_null, [False]])), flat)


def empty_list_to_null(arr: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(pc.list_value_length(arr), 0), pa.scalar(None, arr.type), arr)


def network_scope(ips: pa.Array) -> pa.Array:
    """'pvt' for private, loopback and link-local addresses, 'pub' otherwise (Calico's aggregated names)."""
    encoded = pc.dictionary_encode(ips)
    scopes = [None if ip is None else _scope(ip) for ip in encoded.dictionary.to_pylist()]
    return pa.array(scopes, pa.string()).take(encoded.indices)


@functools.lru_cache(maxsize=65536)
def _scope(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "pub"
    return "pvt" if (addr.is_private or addr.is_loopback or addr.is_link_local or addr in _CGNAT) else "pub"


_CGNAT = ipaddress.ip_network("100.64.0.0/10")

_RFC3339 = (r"^(?P<dt>\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2})(?:\.\d{1,9})?"
            r"(?P<tz>[Zz]|(?P<sign>[+-])(?P<hh>\d{2}):(?P<mm>\d{2}))$")


def rfc3339_seconds(arr: pa.Array) -> pa.Array:
    """Epoch seconds (int64) of RFC 3339 timestamps (fractions truncated); null where not one."""
    parts = pc.extract_regex(arr, _RFC3339)
    dt = pc.replace_substring(pc.replace_substring(pc.struct_field(parts, "dt"), "t", "T"), " ", "T")
    local = pc.strptime(dt, format="%Y-%m-%dT%H:%M:%S", unit="s", error_is_null=True).cast(pa.int64())
    hh = pc.cast(nullify(pc.struct_field(parts, "hh"), ("",)), pa.int64())
    mm = pc.cast(nullify(pc.struct_field(parts, "mm"), ("",)), pa.int64())
    offset = pc.fill_null(pc.add(pc.multiply(hh, 3600), pc.multiply(mm, 60)), 0)
    sign = pc.if_else(pc.equal(pc.struct_field(parts, "sign"), "-"), -1, 1)
    return pc.subtract(local, pc.multiply(offset, sign))


def reasons_where(n: int, *checks: tuple[np.ndarray | pa.Array, str]) -> np.ndarray | None:
    """An object array of the first failing check's reason per row (None where every check passes)."""
    reasons = np.full(n, None, dtype=object)
    for bad, reason in checks:
        mask = bad if isinstance(bad, np.ndarray) else pc.fill_null(bad, False).to_numpy(zero_copy_only=False)
        reasons[np.logical_and(mask, reasons == None)] = reason  # noqa: E711
    return reasons if (reasons != None).any() else None  # noqa: E711


def to_numpy_bool(arr: pa.Array, default: bool = False) -> np.ndarray:
    return pc.fill_null(arr, default).to_numpy(zero_copy_only=False)
