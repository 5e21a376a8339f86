"""A durable, append-only journal of answered queries, so that no paid answer is ever lost.

The extraction is deterministic for a seed: a rerun sends the same batches in the same order. The
:class:`~fidelity.Oracle` cuts every batch into chunks of at most ``chunk_rows`` rows and, with a
journal attached, writes each answered chunk as one record before the engine sees the answer. A
rerun replays the recorded rows in order (rows equal to the next recorded rows are answered from
the file, not paid for) and appends new records once the journal is used up. A ``kill -9``
therefore loses at most the one chunk that was in flight.

File layout (little-endian)::

    file header  b"FIDJNL01" | u32 chunk_rows | u32 input_dim | u32 crc32(chunk_rows, input_dim)
    record       b"FREC" | u32 n | u32 d | u32 k | u32 crc32(n, d, k, payload) | payload
    payload      inputs  (n, d) float64, then outputs (n, k) float64, C order

Records are written with one ``write``, then ``flush`` and ``os.fsync``. A kill can only tear the
last record; opening the journal checks every record's length and checksum and truncates the file
at the first record that fails (normally the torn tail), saying how many bytes it dropped.

A row that differs from the next recorded row while recorded rows remain means the journal
belongs to another run (another seed, options or victim): :class:`JournalError` is raised rather
than replaying answers to questions that were never asked. Replay never silently stops part way,
because appending after stale records would break every later resume. Only when the journal is
used up does the oracle start paying, possibly in the middle of a batch (a budget-stopped run's
last batch was cut to fit its budget; the resumed run sends it whole).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from .errors import FidelityError

log = logging.getLogger("fidelity.journal")

MAGIC = b"FIDJNL01"
RECORD = b"FREC"
_FILE_HEADER = struct.Struct("<8sIII")
_RECORD_HEADER = struct.Struct("<4sIIII")
_MAX_ROWS = 1 << 24          # sanity bounds on a record header read back from disk
_MAX_OUTPUTS = 1 << 20
DEFAULT_CHUNK_ROWS = 256

PathLike = Union[str, os.PathLike]


class JournalError(FidelityError):
    """The journal cannot be used: another run's journal, another victim's, or not a journal."""


def _crc(*parts: bytes) -> int:
    c = 0
    for p in parts:
        c = zlib.crc32(p, c)
    return c & 0xFFFFFFFF


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class Journal:
    """An append-only file of answered query chunks, replayed in order on a rerun.

    Args:
        path: the journal file; created (with its parent folder) when missing.
        input_dim: the victim's input width; must match an existing journal's.
        chunk_rows: rows per record for a new journal. An existing journal keeps the chunk size
            it was written with (the oracle adopts it), so that a rerun cuts batches the same way.

    Attributes:
        path: the file.
        chunk_rows: rows per record (the last chunk of a batch may be smaller).
        input_dim: input width of every record.
        position: index of the next record to replay (``offset``: the next row in it); equals
            ``len(self)`` once replay is done.
        dropped_bytes: bytes of a torn or corrupt tail removed when the journal was opened.

    Example:
        >>> import tempfile, os
        >>> j = Journal(os.path.join(tempfile.mkdtemp(), "q.journal"), input_dim=2)
        >>> j.append(np.zeros((3, 2)), np.ones((3, 1)))
        >>> Journal(j.path, input_dim=2).replay(np.zeros((3, 2))).ravel().tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self, path: PathLike, input_dim: int, *, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        if int(input_dim) < 1:
            raise ValueError("input_dim must be a positive int")
        if int(chunk_rows) < 1:
            raise ValueError("chunk_rows must be a positive int")
        self.path = Path(path)
        self.input_dim = int(input_dim)
        self.chunk_rows = int(chunk_rows)
        self.dropped_bytes = 0
        self._records: list[tuple[int, int, int]] = []   # (payload offset, n, k)
        self.position = 0                                 # next record to replay
        self.offset = 0                                   # next row within it
        self._cache: tuple[int, tuple] = (-1, ())
        size = self.path.stat().st_size if self.path.exists() else 0
        if size >= _FILE_HEADER.size:
            self._scan()
        else:
            if size:    # only a header torn by a kill at creation may be written over
                head = self.path.read_bytes()
                if not (MAGIC.startswith(head) or head.startswith(MAGIC)):
                    raise JournalError(f"{self.path} is not a fidelity journal; refusing to "
                                       "touch it")
            self._create()

    # ------------------------------------------------------------------ opening
    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fields = struct.pack("<II", self.chunk_rows, self.input_dim)
        header = _FILE_HEADER.pack(MAGIC, self.chunk_rows, self.input_dim, _crc(fields))
        with open(self.path, "wb") as f:    # also replaces a header torn by a kill at creation
            f.write(header)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.path)

    def _scan(self) -> None:
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            magic, chunk, dim, crc = _FILE_HEADER.unpack(f.read(_FILE_HEADER.size))
            if magic != MAGIC or crc != _crc(struct.pack("<II", chunk, dim)):
                raise JournalError(f"{self.path} is not a fidelity journal (bad header); "
                                   "refusing to touch it")
            if dim != self.input_dim:
                raise JournalError(f"{self.path} journals a victim with {dim} inputs, "
                                   f"not {self.input_dim}: use a new journal path")
            self.chunk_rows = chunk
            good = offset = _FILE_HEADER.size
            while offset < size:      # bounded: every pass moves offset forward or stops
                head = f.read(_RECORD_HEADER.size)
                if len(head) < _RECORD_HEADER.size:
                    break
                tag, n, d, k, crc = _RECORD_HEADER.unpack(head)
                if (tag != RECORD or d != dim or not 1 <= n <= _MAX_ROWS
                        or not 1 <= k <= _MAX_OUTPUTS):
                    break
                length = 8 * n * (d + k)
                payload = f.read(length)
                if len(payload) < length or crc != _crc(struct.pack("<III", n, d, k), payload):
                    break
                self._records.append((offset + _RECORD_HEADER.size, n, k))
                offset += _RECORD_HEADER.size + length
                good = offset
        if good < size:
            self.dropped_bytes = size - good
            log.warning("journal %s: dropped a torn or corrupt tail of %d bytes after %d "
                        "intact records", self.path, self.dropped_bytes, len(self._records))
            with open(self.path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())

    # ------------------------------------------------------------------ state
    def __len__(self) -> int:
        return len(self._records)

    @property
    def replaying(self) -> bool:
        """True while recorded chunks remain to be replayed."""
        return self.position < len(self._records)

    @property
    def rows(self) -> int:
        """Rows recorded in the file (answers paid for so far, by every run that used it)."""
        return int(sum(n for _, n, _ in self._records))

    def __repr__(self) -> str:
        return (f"Journal({str(self.path)!r}, records={len(self)}, rows={self.rows}, "
                f"position={self.position}, chunk_rows={self.chunk_rows})")

    # ------------------------------------------------------------------ reading
    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache[0] == index:
            return self._cache[1]
        offset, n, k = self._records[index]
        d = self.input_dim
        with open(self.path, "rb") as f:
            f.seek(offset)
            payload = f.read(8 * n * (d + k))
        flat = np.frombuffer(payload, dtype="<f8")
        pair = flat[:n * d].reshape(n, d), flat[n * d:].reshape(n, k)
        self._cache = (index, pair)
        return pair

    def replay(self, x: np.ndarray) -> Optional[np.ndarray]:
        """Recorded answers for the longest leading part of ``x`` that the journal holds next.

        The journal is read as one stream of rows: a chunk may span records, and a chunk that
        runs past the end of the journal gets the answers of its first rows only (the caller
        pays for the rest). That is what a budget-stopped run leaves behind: its last batch was
        cut to fit the budget, and a resumed run sends the whole batch.

        Returns:
            ``(m, k)`` answers for ``x[:m]`` with ``m >= 1``, or ``None`` when the journal is
            used up.

        Raises:
            JournalError: a row of ``x`` differs from the recorded row it should equal while
                recorded rows remain (the journal belongs to another run).
        """
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected rows of {self.input_dim} inputs, got shape {x.shape}")
        answers, done = [], 0
        while done < x.shape[0] and self.replaying:
            inputs, outputs = self._read(self.position)
            take = min(inputs.shape[0] - self.offset, x.shape[0] - done)
            want = inputs[self.offset:self.offset + take]
            got = x[done:done + take]
            if not np.array_equal(want, got):
                row = done + int(np.flatnonzero((want != got).any(1))[0])
                raise JournalError(
                    f"{self.path}: row {row} of this batch differs from recorded row "
                    f"{self.offset + row - done} of record {self.position}: the journal belongs "
                    "to a run with another seed, options or victim. Rerun with the same "
                    "settings, or use a new journal path")
            answers.append(outputs[self.offset:self.offset + take])
            done += take
            self.offset += take
            if self.offset == inputs.shape[0]:
                self.position, self.offset = self.position + 1, 0
        if not answers:
            return None
        return np.array(np.concatenate(answers), dtype=np.float64)

    def records(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields every recorded ``(inputs, outputs)`` pair, in order (e.g. to reuse the data)."""
        for i in range(len(self._records)):
            yield self._read(i)

    # ------------------------------------------------------------------ writing
    def append(self, x: np.ndarray, y: np.ndarray) -> None:
        """Appends one answered chunk durably (write, flush, fsync) before it is used.

        Raises:
            JournalError: records remain to be replayed (appending would break the order).
        """
        if self.replaying:
            raise JournalError("cannot append while recorded rows remain to be replayed")
        x = np.ascontiguousarray(x, dtype="<f8")
        y = np.ascontiguousarray(y, dtype="<f8")
        if x.ndim != 2 or x.shape[1] != self.input_dim or y.ndim != 2 or y.shape[0] != x.shape[0]:
            raise ValueError(f"a record needs inputs (n, {self.input_dim}) and outputs (n, k), "
                             f"got {x.shape} and {y.shape}")
        n, k = y.shape
        payload = x.tobytes() + y.tobytes()
        head = _RECORD_HEADER.pack(RECORD, n, self.input_dim, k,
                                   _crc(struct.pack("<III", n, self.input_dim, k), payload))
        with open(self.path, "ab") as f:
            offset = f.tell()
            f.write(head + payload)
            f.flush()
            os.fsync(f.fileno())
        self._records.append((offset + _RECORD_HEADER.size, n, k))
        self.position, self.offset = len(self._records), 0
