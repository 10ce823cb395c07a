"""Safe, streaming extraction of an uploaded archive (zip, or tar plain/gz/bz2/xz).

Nothing in the archive is trusted:
- the format comes from the bytes, never from the file name;
- every member's name and type is checked before anything of it touches the disk, and one bad
  member (escaping path, link, device) refuses the whole archive;
- every decompressed byte is counted as it streams, including tar headers and the data of members
  we skip, so a bomb stops within one chunk of its budget instead of after it has expanded;
- members are written under names we choose (``<staging>/<n>``), by streaming ``CHUNK`` bytes at a
  time; nothing calls ``extractall`` or uses a name or mode from the archive for a disk path.

Placing the staged files into the dataset layout is ``app.storage.datasets``' job.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import itertools
import lzma
import re
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self

from app.errors import ServiceError

CHUNK = 1 << 20

# A member name longer than this cannot be stored under <data_dir>/datasets/<id>/train/ without
# approaching PATH_MAX (4096); a component longer than 255 bytes fails on every common filesystem.
MAX_NAME_BYTES = 1024
MAX_COMPONENT_BYTES = 255

_DRIVE = re.compile(r"^[A-Za-z]:")
_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZIP_MAGIC = b"PK\x03\x04"
# Only stored and deflated zip members are read: zipfile bounds deflate output per read() call,
# but decompresses a whole bzip2/lzma read at once, and a few KiB of bzip2 can expand to GiBs
# before our counter sees a byte. Every common zip tool writes deflate.
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_ZIP_METHOD_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma", 9: "deflate64"}
# What the decompressors raise on damaged input (gzip.BadGzipFile is an OSError).
_STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
# What tarfile raises on the all-zero block that ends a tar (undocumented, not in the stubs).
_END_OF_ARCHIVE: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_ZIP_MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


class _Readable(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


class DatasetRejected(ServiceError):
    """An uploaded dataset the service will not accept; ``code`` says which rule it broke."""

    status_code = 422
    code = "dataset_invalid"


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int
    max_total_bytes: int
    max_ratio: float
    ratio_floor_bytes: int = 0


@dataclass(frozen=True)
class StagedFile:
    name: str  # the member's name as the archive spells it, for messages
    parts: tuple[str, ...]  # normalised path components
    path: Path  # where its bytes now are
    size: int
    sha256: str


@dataclass
class Extraction:
    format: str  # "zip" | "tar"
    files: list[StagedFile] = field(default_factory=list)
    dirs: list[tuple[str, ...]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{"path", "reason"}]


# Given a file's normalised parts, the reason not to extract it at all, or None to extract it.
SkipRule = Callable[[tuple[str, ...]], "str | None"]


def _never_skip(parts: tuple[str, ...]) -> str | None:
    return None


def detect_format(archive_path: Path) -> str:
    """'zip' or 'tar' from the file's bytes; raise ``archive_unsupported`` otherwise."""
    with open(archive_path, "rb") as fp:
        head = fp.read(512)
    # Compressed and ustar tars are recognised first: is_zipfile() looks for an end-of-central-
    # directory record near the end, which a plain tar whose last member is a .zip also has.
    if head.startswith((_GZIP_MAGIC, _BZIP2_MAGIC, _XZ_MAGIC)) or head[257:262] == b"ustar":
        return "tar"
    if zipfile.is_zipfile(archive_path):
        return "zip"
    if head.startswith(_ZIP_MAGIC):
        raise DatasetRejected(
            "the zip archive is damaged or truncated (its central directory is missing); "
            "create it again and re-upload",
            code="archive_corrupt",
        )
    return "tar"  # pre-POSIX tars have no magic; _open_tar refuses anything that is not one


def safe_parts(name: str) -> tuple[str, ...]:
    """Split a member name into path components, or refuse the archive if it could escape.

    Backslashes count as separators (Windows tools write them), so ``C:\\x`` and ``\\\\server``
    are absolute too. Components are NFC-normalised: macOS writes decomposed accents, and the
    same folder must be the same class whichever machine zipped it.
    """
    if "\x00" in name:
        raise _unsafe(name, "contains a NUL byte")
    path = name.replace("\\", "/")
    if path.startswith("/") or _DRIVE.match(path):
        raise _unsafe(name, "is an absolute path")
    parts = []
    for part in unicodedata.normalize("NFC", path).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise _unsafe(name, "contains a '..' component")
        parts.append(part)
    return tuple(parts)


def extract_archive(
    archive_path: Path,
    staging_dir: Path,
    limits: ArchiveLimits,
    skip: SkipRule = _never_skip,
) -> Extraction:
    """Stream every acceptable file member of the archive into ``staging_dir`` (which exists).

    Raises ``DatasetRejected`` for the whole archive; the caller removes what was written.
    """
    fmt = detect_format(archive_path)
    budget = _Budget(limits, archive_path.stat().st_size)
    extractor = _Extractor(Extraction(fmt), staging_dir, budget, skip)
    if fmt == "zip":
        extractor.run_zip(archive_path)
    else:
        extractor.run_tar(archive_path)
    return extractor.result


class _Budget:
    """Counts entries, bytes decompressed and bytes written; raises the moment one is over."""

    def __init__(self, limits: ArchiveLimits, archive_bytes: int) -> None:
        self.limits = limits
        self.archive_bytes = archive_bytes
        # The floor keeps small honest uploads legal (see IngestLimits.ratio_floor_bytes).
        self.expand_limit = int(limits.max_ratio * max(archive_bytes, limits.ratio_floor_bytes))
        self.entries = 0
        self.expanded = 0
        self.written = 0

    def entries_seen(self, n: int) -> None:
        self.entries += n
        if self.entries > self.limits.max_entries:
            raise DatasetRejected(
                f"the archive has more than {self.limits.max_entries} entries (files and "
                "folders); split it into smaller archives or remove files",
                code="archive_too_many_entries",
                status_code=413,
                details={"limit": self.limits.max_entries, "observed": self.entries},
            )

    def expand(self, n: int) -> None:
        self.expanded += n
        if self.expanded > self.expand_limit:
            raise DatasetRejected(
                f"the archive expands to more than {self.limits.max_ratio:g} times its size "
                f"({self.archive_bytes} bytes); this looks like a compression bomb",
                code="archive_ratio_exceeded",
                status_code=413,
                details={
                    "limit": self.expand_limit,
                    "observed": self.expanded,
                    "archive_bytes": self.archive_bytes,
                    "max_ratio": self.limits.max_ratio,
                },
            )

    def write(self, n: int) -> None:
        # Checked before the chunk is written, so the disk never holds more than the limit.
        if self.written + n > self.limits.max_total_bytes:
            raise DatasetRejected(
                f"the archive's files add up to more than {self.limits.max_total_bytes} bytes; "
                "upload a smaller dataset",
                code="archive_too_large",
                status_code=413,
                details={
                    "limit": self.limits.max_total_bytes,
                    "observed": self.written + n,
                },
            )
        self.written += n


class _CorruptStream(Exception):
    """The compressed tar stream could not be decompressed."""


class _CountingReader:
    """The decompressed tar stream, as tarfile reads it, metered by the budget.

    Sitting under tarfile (rather than around the members it returns) means headers, pax records
    and skipped members' data are counted too: skipping a 100 GiB hidden file still costs
    decompressing 100 GiB.
    """

    def __init__(self, stream: _Readable, budget: _Budget, compressed: bool) -> None:
        self._stream = stream
        self._budget = budget
        self._compressed = compressed

    def read(self, n: int = CHUNK) -> bytes:
        if n is None or n < 0:  # never read an unbounded amount in one call
            n = CHUNK
        if self._compressed:
            try:
                data = self._stream.read(n)
            except _STREAM_ERRORS as exc:
                raise _CorruptStream(str(exc) or type(exc).__name__) from exc
        else:
            data = self._stream.read(n)
        self._budget.expand(len(data))
        return data


class _Extractor:
    def __init__(
        self, result: Extraction, staging_dir: Path, budget: _Budget, skip: SkipRule
    ) -> None:
        self.result = result
        self.staging_dir = staging_dir
        self.budget = budget
        self.skip = skip
        self._blob_numbers = itertools.count()

    # -- zip ---------------------------------------------------------------------------------

    def run_zip(self, archive_path: Path) -> None:
        try:
            zf = zipfile.ZipFile(archive_path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise _corrupt(exc) from exc
        with zf:
            infos = zf.infolist()
            self.budget.entries_seen(len(infos))
            # The central directory lists every member up front, so a bad one refuses the
            # archive before a single byte is written.
            members = []
            for info in infos:
                parts = safe_parts(info.orig_filename)
                members.append((info, parts, _zip_kind(info)))
            for info, parts, kind in members:
                if kind == "dir":
                    self._add_dir(parts)
                    continue
                reason = self._file_skip_reason(info.orig_filename, parts) or _zip_problem(info)
                if reason:
                    self._skipped(info.orig_filename, reason)
                    continue
                self._extract_zip_member(zf, info, parts)

    def _extract_zip_member(
        self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, parts: tuple[str, ...]
    ) -> None:
        dest = self._next_blob()
        try:
            with zf.open(info) as src:
                size, digest = self._copy(src, dest, count_expanded=True)
        except _ZIP_MEMBER_ERRORS as exc:
            # One damaged member costs that file, not the dataset: zip members are independent.
            dest.unlink(missing_ok=True)
            self._skipped(info.orig_filename, f"could not be decompressed ({exc})")
            return
        self.result.files.append(StagedFile(info.orig_filename, parts, dest, size, digest))

    # -- tar ---------------------------------------------------------------------------------

    def run_tar(self, archive_path: Path) -> None:
        with _open_tar(archive_path, self.budget) as (tf, stream):
            while True:
                try:
                    member = tf.next()
                except (tarfile.TarError, _CorruptStream) as exc:
                    raise _corrupt(exc) from exc
                if member is None:
                    stream.check_complete()
                    return
                self.budget.entries_seen(1)
                parts = safe_parts(member.name)
                kind = _tar_kind(member)
                if kind == "dir":
                    self._add_dir(parts)
                    continue
                reason = self._file_skip_reason(member.name, parts)
                if reason is None and member.issparse():
                    # Holes come out of extractfile() without passing the metered stream, so
                    # a tiny sparse member could fill the disk up to max_total_bytes.
                    reason = "sparse files are not accepted; archive it without --sparse"
                if reason:
                    self._skipped(member.name, reason)
                    continue
                self._extract_tar_member(tf, member, parts)

    def _extract_tar_member(
        self, tf: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]
    ) -> None:
        dest = self._next_blob()
        try:
            src = tf.extractfile(member)
            assert src is not None  # regular files always have a file object
            with src:
                # Not counted again: _CountingReader already metered these bytes.
                size, digest = self._copy(src, dest, count_expanded=False)
        except (tarfile.TarError, _CorruptStream) as exc:
            # A tar is one stream: past a damaged member nothing can be trusted.
            raise _corrupt(exc) from exc
        self.result.files.append(StagedFile(member.name, parts, dest, size, digest))

    # -- shared ------------------------------------------------------------------------------

    def _file_skip_reason(self, name: str, parts: tuple[str, ...]) -> str | None:
        if not parts:
            raise _unsafe(name, "has no file name")
        problem = _name_problem(parts)
        if problem:
            return problem
        return self.skip(parts)

    def _add_dir(self, parts: tuple[str, ...]) -> None:
        if parts and _name_problem(parts) is None:
            self.result.dirs.append(parts)

    def _skipped(self, name: str, reason: str) -> None:
        self.result.skipped.append({"path": name, "reason": reason})

    def _next_blob(self) -> Path:
        return self.staging_dir / f"{next(self._blob_numbers):08d}"

    def _copy(self, src: _Readable, dest: Path, *, count_expanded: bool) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        # "xb": the staged name is ours and new; never follow or overwrite anything.
        with open(dest, "xb") as out:
            while chunk := src.read(CHUNK):
                if count_expanded:
                    self.budget.expand(len(chunk))
                self.budget.write(len(chunk))
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()


class _TarStream:
    """What tarfile does not tell us: did the archive end where it says it ends?

    In stream mode tarfile stops quietly at end of file, or at a damaged header, anywhere after
    the first member, so a tar cut at a member boundary would become a smaller dataset without a
    word. We record why each header read stopped, and after the last member also read the
    compressed stream to its end, which is where gzip, bzip2 and xz check their CRC and length.
    """

    def __init__(self, reader: _CountingReader) -> None:
        self.reader = reader
        self.header_error: tarfile.HeaderError | None = None

    def member_class(self) -> type[tarfile.TarInfo]:
        stream = self

        class _Member(tarfile.TarInfo):
            @classmethod
            def fromtarfile(cls, tarfile_: tarfile.TarFile) -> Self:
                try:
                    return super().fromtarfile(tarfile_)
                except tarfile.HeaderError as exc:
                    stream.header_error = exc
                    raise

        return _Member

    def check_complete(self) -> None:
        if not isinstance(self.header_error, _END_OF_ARCHIVE):
            # Empty or short header: the file ended; a bad checksum: a damaged header.
            why = self.header_error or "the archive ended without its end-of-archive marker"
            raise _corrupt(EOFError(f"{why}; the tar is truncated or damaged"))
        try:
            # Only the tar's zero padding remains; still metered, so a bomb hidden after the
            # end marker costs the budget, not the disk.
            while self.reader.read(CHUNK):
                pass
        except _CorruptStream as exc:
            raise _corrupt(exc) from exc


@contextmanager
def _open_tar(archive_path: Path, budget: _Budget) -> Iterator[tuple[tarfile.TarFile, _TarStream]]:
    """The archive as a forward-only tarfile over our own, metered decompressor.

    We pick the decompressor from the magic bytes instead of ``mode="r:*"`` so the bytes tarfile
    sees pass through ``_CountingReader`` after decompression; "r|" never seeks backwards.
    """
    with ExitStack() as stack:
        raw = stack.enter_context(open(archive_path, "rb"))
        stream = stack.enter_context(_decompressor(raw))
        reader = _CountingReader(stream, budget, compressed=stream is not raw)
        checker = _TarStream(reader)
        try:
            # The stubs want a seekable file; in "r|" mode tarfile only ever calls read().
            tf = stack.enter_context(
                tarfile.open(  # type: ignore[call-overload]
                    fileobj=reader, mode="r|", tarinfo=checker.member_class()
                )
            )
        except (tarfile.TarError, _CorruptStream) as exc:
            if _starts_like_tar(archive_path):
                # A tar that breaks before its first member is complete: a cut upload, most
                # often, and the uploader can fix that by sending it again.
                raise _corrupt(exc) from exc
            raise DatasetRejected(
                "the upload is not a .zip, .tar or .tar.gz archive",
                code="archive_unsupported",
                status_code=415,
                details={"detail": str(exc)},
            ) from exc
        yield tf, checker


def _starts_like_tar(archive_path: Path) -> bool:
    """Whether the (decompressed) file starts like a tar: a valid first header, or a bzip2 or xz
    stream that is sound as far as it goes but ends before one header's worth of output.

    At most one header's worth is decompressed, whatever the input, so this cannot be a bomb.
    Random bytes behind a gzip magic fail the header check and stay "unsupported"; gzip gets no
    "sound but cut" allowance because its header has no checksum, while bzip2 blocks and xz
    headers do, and bzip2 emits nothing until a whole (up to 900 KB) block is decoded.
    """
    with open(archive_path, "rb") as fp:
        magic = fp.read(6)
        fp.seek(0)
        decompressor: zlib._Decompress | bz2.BZ2Decompressor | lzma.LZMADecompressor | None
        if magic.startswith(_GZIP_MAGIC):
            decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        elif magic.startswith(_BZIP2_MAGIC):
            decompressor = bz2.BZ2Decompressor()
        elif magic.startswith(_XZ_MAGIC):
            decompressor = lzma.LZMADecompressor()
        else:
            decompressor = None
        if decompressor is None:
            head = fp.read(tarfile.BLOCKSIZE)
        else:
            head = b""
            try:
                while len(head) < tarfile.BLOCKSIZE and (chunk := fp.read(CHUNK)):
                    head += decompressor.decompress(chunk, tarfile.BLOCKSIZE - len(head))
            except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
                return False
            if len(head) < tarfile.BLOCKSIZE and not magic.startswith(_GZIP_MAGIC):
                return not decompressor.eof  # sound so far, then the file ends: cut
    if head[257:262] == b"ustar":
        return True
    try:
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _decompressor(raw: io.BufferedReader) -> io.BufferedIOBase:
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(_BZIP2_MAGIC):
        return bz2.BZ2File(raw)
    if head.startswith(_XZ_MAGIC):
        return lzma.LZMAFile(raw)
    return raw


def _zip_kind(info: zipfile.ZipInfo) -> str:
    # Unix zip tools keep st_mode in the high 16 bits of external_attr; 0 means "not recorded".
    mode = info.external_attr >> 16
    ftype = stat.S_IFMT(mode)
    if ftype == stat.S_IFLNK:
        raise _link(info.orig_filename)
    if ftype == stat.S_IFDIR or info.orig_filename.endswith(("/", "\\")):
        return "dir"
    if ftype in (0, stat.S_IFREG):
        return "file"
    what = {stat.S_IFCHR: "a device", stat.S_IFBLK: "a device", stat.S_IFIFO: "a FIFO"}
    raise _special(info.orig_filename, what.get(ftype, f"of unknown type {oct(ftype)}"))


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        raise _link(member.name)
    if member.isdir():
        return "dir"
    if member.isreg():  # includes contiguous and GNU sparse files
        return "file"
    if member.ischr() or member.isblk():
        raise _special(member.name, "a device")
    if member.isfifo():
        raise _special(member.name, "a FIFO")
    raise _special(member.name, f"of unknown type {member.type!r}")


def _zip_problem(info: zipfile.ZipInfo) -> str | None:
    if info.flag_bits & 0x1:
        return "the file is encrypted; upload an archive without a password"
    if info.compress_type not in _ZIP_METHODS:
        method = _ZIP_METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
        return f"uses {method} compression; re-create the zip with standard (deflate) compression"
    return None


def _name_problem(parts: tuple[str, ...]) -> str | None:
    try:
        encoded = [p.encode("utf-8") for p in parts]
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8; rename it"
    if sum(len(p) + 1 for p in encoded) > MAX_NAME_BYTES or any(
        len(p) > MAX_COMPONENT_BYTES for p in encoded
    ):
        return "the path is too long; shorten it"
    return None


def _unsafe(name: str, why: str) -> DatasetRejected:
    return DatasetRejected(
        f"archive entry {name!r} {why}; every entry must be a relative path inside the archive",
        code="archive_unsafe_path",
        details={"entry": name},
    )


def _link(name: str) -> DatasetRejected:
    return DatasetRejected(
        f"archive entry {name!r} is a link; links are not accepted, archive the files themselves",
        code="archive_link_entry",
        details={"entry": name},
    )


def _special(name: str, what: str) -> DatasetRejected:
    return DatasetRejected(
        f"archive entry {name!r} is {what}, not a file or folder; remove it from the archive",
        code="archive_special_entry",
        details={"entry": name},
    )


def _corrupt(exc: BaseException) -> DatasetRejected:
    return DatasetRejected(
        "the archive is damaged or truncated; create it again and re-upload",
        code="archive_corrupt",
        details={"detail": str(exc) or type(exc).__name__},
    )
