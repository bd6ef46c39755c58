"""Identify filesystems and partitions from raw bytes, the way blkid does.

storage-init runs as PID 1 before udev exists, so nothing has populated /dev/disk/by-*; to
resolve a UUID=, LABEL=, PARTUUID= or PARTLABEL= device spec it has to read superblocks and
partition tables itself. Values are formatted as `blkid -p` prints them, because that is what
users copy into their configuration (the one exception: an MBR with a zero disk signature,
where blkid prints no PARTUUID and the kernel's root=PARTUUID= uses "00000000-NN").

This module does no I/O of its own: callers pass a reader, `read(offset, length)`, that may
return fewer bytes at the end of a device. Nothing here raises on malformed or truncated
data; unrecognised input gives None or an empty dict. Exceptions raised by the reader itself
(an I/O error on a failing disk) are left to the caller.
"""

from __future__ import annotations

import struct

from . import TYPE_CHECKING
from .record import record

if TYPE_CHECKING:  # (collections.abc imports collections: start time for an annotation)
    from collections.abc import Callable

    Reader = Callable[[int, int], bytes]


@record(frozen=True)
class Filesystem:
    fstype: str  # "ext4", "ext3", "ext2", "ext4dev", "vfat", "xfs", "btrfs", "erofs"
    uuid: str | None  # formatted exactly as blkid prints UUID=
    label: str | None  # as blkid prints LABEL= (None when empty)


@record(frozen=True)
class Partition:
    number: int  # 1-based, as the kernel numbers it (sysfs .../partition)
    partuuid: str  # as blkid prints PARTUUID= (GPT: lowercase GUID; MBR: "xxxxxxxx-NN")
    partlabel: str | None  # GPT name; None for MBR or an empty name


# os.pread() rejects offsets past this, so garbage offsets must never reach the reader.
_MAX_OFFSET = 2**63 - 1
_C_SPACE = " \t\n\v\f\r"  # what C's isspace() strips in blkid, unlike str.rstrip()'s Unicode set


def _get(read: Reader, offset: int, length: int) -> bytes | None:
    """Exactly `length` bytes at `offset`, or None if the device is too short for them."""
    if offset < 0 or length < 0 or offset + length > _MAX_OFFSET:
        return None
    data = read(offset, length)
    return data[:length] if len(data) >= length else None


def _label(raw: bytes) -> str | None:
    # blkid treats the field as a C string and trims trailing whitespace (space-padded FAT).
    text = raw.split(b"\0", 1)[0].decode("utf-8", "replace").rstrip(_C_SPACE)
    return text or None


def format_uuid(raw: bytes) -> str:
    """16 bytes as 8-4-4-4-12 lowercase hex (the uuid module pulls in `platform` and more,
    which the frozen binary leaves out)."""
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:32]}"


def _mixed_endian(raw: bytes) -> bytes:
    """GPT GUIDs store their first three fields little-endian."""
    return raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:16]


def _uuid(raw: bytes) -> str | None:
    # blkid does not report an all-zero UUID at all.
    return format_uuid(raw) if any(raw) else None


def _u32(data: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<I", data, offset)[0]
    return value


# ext2/3/4 ------------------------------------------------------------------------------------

_EXT_HAS_JOURNAL = 0x4  # compat
_EXT_RECOVER = 0x4  # incompat: a journal needs replaying
_EXT_JOURNAL_DEV = 0x8  # incompat: an external journal, not a mountable filesystem
_EXT_TEST_FILESYS = 0x4  # s_flags
# Features ext3 understands; anything beyond them makes it ext4 (libblkid's ext.c).
_EXT3_RO_COMPAT = 0x1 | 0x2 | 0x4  # sparse_super, large_file, btree_dir
_EXT3_INCOMPAT = 0x2 | _EXT_RECOVER | 0x10  # filetype, recover, meta_bg


def _probe_ext(read: Reader) -> Filesystem | None:
    sb = _get(read, 1024, 512)
    if sb is None or sb[0x38:0x3A] != b"\x53\xef":
        return None
    compat, incompat, ro_compat = struct.unpack_from("<3I", sb, 0x5C)
    if incompat & _EXT_JOURNAL_DEV:
        return None
    if _u32(sb, 0x160) & _EXT_TEST_FILESYS:
        fstype = "ext4dev"
    elif ro_compat & ~_EXT3_RO_COMPAT or incompat & ~_EXT3_INCOMPAT:
        fstype = "ext4"
    elif compat & _EXT_HAS_JOURNAL:
        fstype = "ext3"
    elif incompat & _EXT_RECOVER:
        return None  # ext2 cannot need journal recovery; blkid claims no type for it
    else:
        fstype = "ext2"
    return Filesystem(fstype, _uuid(sb[0x68:0x78]), _label(sb[0x78:0x88]))


# XFS, btrfs, EROFS ---------------------------------------------------------------------------


def _log2_size_ok(size: int, log: int, low: int, high: int) -> bool:
    return low <= log <= high and size == 1 << log


def _probe_xfs(read: Reader) -> Filesystem | None:
    sb = _get(read, 0, 0xA0)
    if sb is None or sb[:4] != b"XFSB":
        return None
    blocksize, dblocks = struct.unpack_from(">IQ", sb, 0x04)
    rextsize, agblocks, agcount = struct.unpack_from(">3I", sb, 0x50)
    sectsize, inodesize = struct.unpack_from(">HH", sb, 0x66)
    blocklog, sectlog, inodelog, inopblog = sb[0x78:0x7C]
    # The same sanity checks as blkid: "XFSB" alone is too weak a signature.
    valid = (
        agcount > 0
        and _log2_size_ok(sectsize, sectlog, 9, 15)
        and _log2_size_ok(blocksize, blocklog, 9, 16)
        and _log2_size_ok(inodesize, inodelog, 8, 11)
        and blocklog - inodelog == inopblog
        and 4096 <= rextsize * blocksize <= 1 << 30
        and sb[0x7F] <= 100
        and (agcount - 1) * agblocks + 64 <= dblocks <= agcount * agblocks
    )
    if not valid:
        return None
    return Filesystem("xfs", _uuid(sb[0x20:0x30]), _label(sb[0x6C:0x78]))


def _probe_btrfs(read: Reader) -> Filesystem | None:
    sb = _get(read, 0x10000, 0x22B)
    if sb is None or sb[0x40:0x48] != b"_BHRfS_M":
        return None
    return Filesystem("btrfs", _uuid(sb[0x20:0x30]), _label(sb[0x12B:0x22B]))


def _probe_erofs(read: Reader) -> Filesystem | None:
    sb = _get(read, 1024, 0x50)
    if sb is None or _u32(sb, 0) != 0xE0F5E1E2 or not 9 <= sb[0x0C] <= 16:
        return None
    return Filesystem("erofs", _uuid(sb[0x30:0x40]), _label(sb[0x40:0x50]))


# FAT -----------------------------------------------------------------------------------------

# sector size, sectors per cluster, reserved sectors, FATs, root entries, sectors (16-bit),
# media byte, sectors per FAT (16-bit): the BPB at offset 0x0B of the boot sector.
_BPB = struct.Struct("<HBHBHHBH")
_FAT12_MAX, _FAT16_MAX, _FAT32_MAX = 0xFF4, 0xFFF4, 0x0FFFFFF6
_FAT_STRONG_MAGICS = ((0x52, b"MSWIN"), (0x52, b"FAT32   "), (0x36, b"MSDOS"),
                      (0x36, b"FAT16   "), (0x36, b"FAT12   "), (0x36, b"FAT     "))


def _fat_valid(boot: bytes) -> bool:
    """blkid's plausibility checks, which keep MBRs and other boot sectors from passing as FAT."""
    strong = any(boot[off:off + len(magic)] == magic for off, magic in _FAT_STRONG_MAGICS)
    if not strong and (boot[510:512] != b"\x55\xaa" or boot[0x36:0x3E] in (b"JFS     ",
                                                                            b"HPFS    ")):
        return False
    if boot[3:11] == b"-FVE-FS-":  # BitLocker keeps a FAT-like BPB in front of its metadata
        return False
    sector_size, cluster, reserved, fats, dir_entries, sectors, media, fat16_len = (
        _BPB.unpack_from(boot, 0x0B))
    if not fats or not reserved or not (media >= 0xF8 or media == 0xF0):
        return False
    if cluster == 0 or cluster & (cluster - 1) or sector_size not in (512, 1024, 2048, 4096):
        return False
    fat32_len = _u32(boot, 0x24)
    data_sectors = (sectors or _u32(boot, 0x20)) - reserved - (fat16_len or fat32_len) * fats
    data_sectors -= (dir_entries * 32 + sector_size - 1) // sector_size
    if data_sectors < 0:
        return False
    clusters: int = data_sectors // cluster
    if not fat16_len and fat32_len:
        return clusters <= _FAT32_MAX
    return clusters <= (_FAT16_MAX if clusters > _FAT12_MAX else _FAT12_MAX)


def _fat_dir_label(read: Reader, offset: int, entries: int) -> bytes | None:
    """The volume-label entry of a root directory, which is where blkid takes LABEL= from."""
    directory = _get(read, offset, entries * 32)
    if directory is None:
        return None
    for pos in range(0, len(directory), 32):
        entry = directory[pos:pos + 32]
        attr = entry[11]
        if entry[0] == 0x00:  # end of directory
            break
        if entry[0] == 0xE5 or entry[0x14:0x16] != b"\0\0" or entry[0x1A:0x1C] != b"\0\0":
            continue  # deleted, or a real file or directory
        if attr & 0x3F == 0x0F:
            continue  # a long-name fragment
        if attr & 0x18 == 0x08:
            # 0x05 stands in for a leading 0xE5, which would mean "deleted".
            return b"\xe5" + entry[1:11] if entry[0] == 0x05 else entry[:11]
    return None


def _probe_vfat(read: Reader) -> Filesystem | None:
    boot = _get(read, 0, 512)
    if boot is None or not _fat_valid(boot):
        return None
    sector_size, cluster, reserved, fats, dir_entries, _, _, fat16_len = (
        _BPB.unpack_from(boot, 0x0B))
    fat32_len = _u32(boot, 0x24)
    first_data = reserved + (fat16_len or fat32_len) * fats
    label: bytes | None = None
    serial: bytes | None = None
    if fat16_len:
        label = _fat_dir_label(read, first_data * sector_size, dir_entries)
        if boot[0x26] in (0x28, 0x29):  # extended BPB present
            serial = boot[0x27:0x2B]
    elif fat32_len:
        serial = boot[0x43:0x47]
        # The root directory is a cluster chain; follow it a bounded number of steps.
        cluster_no, fat_entries = _u32(boot, 0x2C), fat32_len * sector_size // 4
        for _ in range(100):
            if not 2 <= cluster_no < fat_entries:
                break
            offset = (first_data + (cluster_no - 2) * cluster) * sector_size
            label = _fat_dir_label(read, offset, cluster * sector_size // 32)
            if label is not None:
                break
            entry = _get(read, reserved * sector_size + cluster_no * 4, 4)
            if entry is None:
                break
            cluster_no = _u32(entry, 0) & 0x0FFFFFFF
        # blkid rejects a FAT32 whose FSInfo sector has foreign signatures.
        fsinfo_sector = struct.unpack_from("<H", boot, 0x30)[0]
        if fsinfo_sector:
            fsinfo = _get(read, fsinfo_sector * sector_size, 512)
            if (fsinfo is None or fsinfo[:4] not in (b"RRaA", b"RRdA", bytes(4))
                    or fsinfo[484:488] not in (b"rrAa", bytes(4))):
                return None
    uuid_text = None
    if serial is not None and any(serial):
        uuid_text = f"{serial[3]:02X}{serial[2]:02X}-{serial[1]:02X}{serial[0]:02X}"
    return Filesystem("vfat", uuid_text, None if label is None else _label(label))


def probe_filesystem(read: Reader) -> Filesystem | None:
    """Identify the filesystem at the start of `read`, or None if it is none we know."""
    # Signatures that cannot occur by accident first; FAT's heuristics go last.
    for probe in (_probe_ext, _probe_xfs, _probe_btrfs, _probe_erofs, _probe_vfat):
        found = probe(read)
        if found is not None:
            return found
    return None


# Partition tables ----------------------------------------------------------------------------

_MBR_EXTENDED = frozenset({0x05, 0x0F, 0x85})
_MBR_GPT_PROTECTIVE = 0xEE
_MAX_EBRS = 256  # bounds a corrupt EBR chain; real ones are far shorter
_MAX_GPT_TABLE = 1 << 20  # bytes; a standard table is 16 KiB


def _mbr_slots(sector: bytes) -> list[tuple[int, int, int, int]]:
    """(boot flag, type, start, size) of the four entries of an MBR or EBR."""
    return [struct.unpack_from("<B3xB3xII", sector, 446 + 16 * i) for i in range(4)]


def _probe_gpt(read: Reader, sector_size: int) -> dict[int, Partition]:
    header = _get(read, sector_size, 92)
    if header is None or header[:8] != b"EFI PART":
        return {}
    header_size = _u32(header, 12)
    my_lba, _, first_usable, last_usable = struct.unpack_from("<4Q", header, 24)
    table_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if not 92 <= header_size <= sector_size or my_lba != 1 or first_usable > last_usable:
        return {}
    if entry_size < 128:
        return {}
    count = min(count, _MAX_GPT_TABLE // entry_size)
    table = _get(read, table_lba * sector_size, count * entry_size)
    if table is None:
        return {}
    partitions = {}
    for index in range(count):
        entry = table[index * entry_size:index * entry_size + 128]
        first, last = struct.unpack_from("<QQ", entry, 32)
        if entry[:16] == bytes(16):
            continue  # unused slot; the kernel still counts it, so numbers keep their gaps
        if first < first_usable or last > last_usable or last < first:
            continue  # blkid ignores entries outside the usable area
        name = entry[56:128].decode("utf-16-le", "replace").split("\0", 1)[0].rstrip(_C_SPACE)
        number = index + 1
        partuuid = format_uuid(_mixed_endian(entry[16:32]))
        partitions[number] = Partition(number, partuuid, name or None)
    return partitions


def _count_logical(read: Reader, ex_start: int, ex_size: int, sector_size: int,
                   seen: set[int]) -> int:
    """How many logical partitions the EBR chain of one extended partition holds."""
    found = 0
    visited: set[int] = set()
    ebr_start, ebr_size = ex_start, ex_size
    while ebr_start not in visited and len(visited) < _MAX_EBRS:
        visited.add(ebr_start)
        ebr = _get(read, ebr_start * sector_size, 512)
        if ebr is None or ebr[510:512] != b"\x55\xaa":
            break
        slots = _mbr_slots(ebr)
        for index, (_, ptype, start, size) in enumerate(slots):
            absolute = ebr_start + start
            if not size or ptype in _MBR_EXTENDED or absolute in seen:
                continue
            # The 3rd and 4th slots often hold garbage; the kernel only believes them if
            # they fit inside the EBR's and the extended partition's bounds.
            if index >= 2 and (start + size > ebr_size or absolute < ex_start
                               or absolute + size > ex_start + ex_size):
                continue
            seen.add(absolute)
            found += 1
        links = [(start, size) for _, ptype, start, size in slots
                 if size and start and ptype in _MBR_EXTENDED]
        if not links:
            break
        # Links are relative to the start of the outermost extended partition.
        ebr_start, ebr_size = ex_start + links[0][0], links[0][1]
    return found


def _probe_mbr(read: Reader, mbr: bytes, sector_size: int) -> dict[int, Partition]:
    slots = _mbr_slots(mbr)
    # A boot flag other than 0/0x80 means boot code, not a table; a FAT boot sector also
    # ends in 0x55AA but its partition area is code.
    if any(flag not in (0, 0x80) for flag, _, _, _ in slots) or _fat_valid(mbr):
        return {}
    signature = _u32(mbr, 440)
    # The kernel (and blkid, unless the signature is 0) names MBR partitions after the
    # disk signature and the partition number in hex.
    numbers = [n for n, (_, _, _, size) in enumerate(slots, 1) if size]
    seen: set[int] = set()
    logical = 0
    for _, ptype, start, size in slots:
        if size and start and ptype in _MBR_EXTENDED:
            logical += _count_logical(read, start, size, sector_size, seen)
    numbers += range(5, 5 + logical)
    return {n: Partition(n, f"{signature:08x}-{n:02x}", None) for n in numbers}


def probe_partitions(read: Reader, sector_size: int = 512) -> dict[int, Partition]:
    """The partitions of a whole disk, keyed by kernel partition number; {} if no table."""
    if sector_size < 512 or sector_size & (sector_size - 1):
        return {}
    mbr = _get(read, 0, 512)
    if mbr is None or mbr[510:512] != b"\x55\xaa":
        return {}
    # Like the kernel, trust a GPT only behind a protective (or hybrid) MBR.
    if any(ptype == _MBR_GPT_PROTECTIVE for _, ptype, _, _ in _mbr_slots(mbr)):
        return _probe_gpt(read, sector_size)
    return _probe_mbr(read, mbr, sector_size)
