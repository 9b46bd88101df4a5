"""ZFS properties (``zfs_prop.c``): the simulated ones, value sources and the native table."""

from __future__ import annotations

from dataclasses import dataclass

from labsim.hosts.zfs.names import _DATASET, _FS, _FSVOL, _SNAP, _VOL, _user_prop

# --------------------------------------------------------------------------------------------
# Properties (module/zcommon/zfs_prop.c)


@dataclass(frozen=True)
class _Prop:
    """A column or property: native (simulated or not), user-defined, or a special @ property."""

    name: str
    column: str
    kind: str  # "number" | "string" | "index" | "user" | "special" | "other"
    types: int = _DATASET
    fixed: bool = False  # fixed width unless -p
    right: bool = False  # right-aligned
    index_names: tuple[str, ...] = ()

    def initial_width(self) -> int:
        """zprop_width: the column name, at least 5 for numbers, the longest index value."""
        if self.kind in ("user", "special"):
            return len(self.name)
        width = len(self.column)
        if self.kind == "number":
            width = max(width, 5)
        if self.kind == "index":
            width = max([width, *(len(n) for n in self.index_names)])
        return width


_ONOFF = ("off", "on")

# The simulated native properties, in the order of zfs_prop_t (the order of `zfs get all`).
_SIM_PROPS: tuple[_Prop, ...] = (
    _Prop("type", "TYPE", "string"),
    _Prop("creation", "CREATION", "number"),
    _Prop("used", "USED", "number", fixed=True, right=True),
    _Prop("available", "AVAIL", "number", _FSVOL, fixed=True, right=True),
    _Prop("referenced", "REFER", "number", fixed=True, right=True),
    _Prop("compressratio", "RATIO", "number", fixed=True, right=True),
    _Prop("mounted", "MOUNTED", "index", _FS, index_names=_ONOFF),
    _Prop("origin", "ORIGIN", "string", _FSVOL),
    _Prop("volsize", "VOLSIZE", "number", _SNAP | _VOL, fixed=True, right=True),
    _Prop("mountpoint", "MOUNTPOINT", "string", _FS),
    _Prop("createtxg", "CREATETXG", "number", right=True),
    _Prop("name", "NAME", "string"),
    _Prop("guid", "GUID", "number", right=True),
    _Prop("usedbysnapshots", "USEDSNAP", "number", _FSVOL, fixed=True, right=True),
    _Prop("usedbydataset", "USEDDS", "number", _FSVOL, fixed=True, right=True),
    _Prop("usedbychildren", "USEDCHILD", "number", _FSVOL, fixed=True, right=True),
    _Prop("usedbyrefreservation", "USEDREFRESERV", "number", _FSVOL, fixed=True, right=True),
    _Prop("defer_destroy", "DEFER_DESTROY", "index", _SNAP, index_names=_ONOFF),
    _Prop("userrefs", "USERREFS", "number", _SNAP, fixed=True, right=True),
)
_SIM_BY_NAME = {p.name: p for p in _SIM_PROPS}
_SPECIAL_PREFIXES = (
    *(
        f"{who}{what}@"
        for who in ("user", "group", "project")
        for what in ("used", "quota", "objused", "objquota")
    ),
    "written@",
    "written#",
)

# Source kinds (zprop_source_t).
_SRC_NONE = 0x1
_SRC_DEFAULT = 0x2
_SRC_TEMPORARY = 0x4
_SRC_LOCAL = 0x8
_SRC_INHERITED = 0x10
_SRC_RECEIVED = 0x20
_SRC_ALL = 0x3F


def _find_prop(name: str) -> _Prop | None:
    """zfs_name_to_prop for native properties: the name, or the column name in lower case."""
    sim = _SIM_BY_NAME.get(name)
    if sim is not None:
        return sim
    for prop in _SIM_PROPS:
        if prop.column.lower() == name:
            return prop
    for native, column, _edit, _inherit, _values in _NATIVE_PROPS:
        if name in (native, column.lower()):
            return _Prop(native, column, "other")
    return None


def _list_prop(name: str) -> _Prop | None:
    """A property usable in -o (addlist): native, user-defined, or userquota/written."""
    prop = _find_prop(name)
    if prop is not None:
        return prop
    if _user_prop(name):
        return _Prop(name, name.upper(), "user")
    if name.startswith(_SPECIAL_PREFIXES):
        return _Prop(name, name.upper(), "special", right=True)
    return None


_SPACE_PROPS = (
    "name",
    "avail",
    "used",
    "usedbysnapshots",
    "usedbydataset",
    "usedbyrefreservation",
    "usedbychildren",
)


# Every visible native property of OpenZFS 2.2.7 as (name, column, editable, inheritable, values),
# sorted by name: the table `zfs list|get` usage prints, and the names -o accepts.
_NATIVE_PROPS: tuple[tuple[str, str, bool, bool, str], ...] = (
    (
        "aclinherit",
        "ACLINHERIT",
        True,
        True,
        ("discard | noallow | restricted | passthrough | passthrough-x"),
    ),
    ("aclmode", "ACLMODE", True, True, "discard | groupmask | passthrough | restricted"),
    ("acltype", "ACLTYPE", True, True, "off | nfsv4 | posix"),
    ("atime", "ATIME", True, True, "on | off"),
    ("available", "AVAIL", False, False, "<size>"),
    ("canmount", "CANMOUNT", True, False, "on | off | noauto"),
    ("casesensitivity", "CASE", False, True, "sensitive | insensitive | mixed"),
    (
        "checksum",
        "CHECKSUM",
        True,
        True,
        ("on | off | fletcher2 | fletcher4 | sha256 | sha512 | skein | edonr | blake3"),
    ),
    ("clones", "CLONES", False, False, "<dataset>[,...]"),
    (
        "compression",
        "COMPRESS",
        True,
        True,
        (
            "on | off | lzjb | gzip | gzip-[1-9] | zle | lz4 | zstd"
            " | zstd-[1-19] | zstd-fast"
            " | zstd-fast-[1-10,20,30,40,50,60,70,80,90,100,500,1000]"
        ),
    ),
    ("compressratio", "RATIO", False, False, "<1.00x or higher if compressed>"),
    ("context", "CONTEXT", True, False, "<selinux context>"),
    ("copies", "COPIES", True, True, "1 | 2 | 3"),
    ("createtxg", "CREATETXG", False, False, "<uint64>"),
    ("creation", "CREATION", False, False, "<date>"),
    (
        "dedup",
        "DEDUP",
        True,
        True,
        (
            "on | off | verify | sha256[,verify] | sha512[,verify]"
            " | skein[,verify] | edonr,verify | blake3[,verify]"
        ),
    ),
    ("defcontext", "DEFCONTEXT", True, False, "<selinux defcontext>"),
    ("defer_destroy", "DEFER_DESTROY", False, False, "yes | no"),
    ("devices", "DEVICES", True, True, "on | off"),
    ("dnodesize", "DNSIZE", True, True, "legacy | auto | 1k | 2k | 4k | 8k | 16k"),
    (
        "encryption",
        "ENCRYPTION",
        False,
        True,
        (
            "on | off | aes-128-ccm | aes-192-ccm | aes-256-ccm"
            " | aes-128-gcm | aes-192-gcm | aes-256-gcm"
        ),
    ),
    ("encryptionroot", "ENCROOT", False, False, "<filesystem | volume>"),
    ("exec", "EXEC", True, True, "on | off"),
    ("filesystem_count", "FSCOUNT", False, False, "<count>"),
    ("filesystem_limit", "FSLIMIT", True, False, "<count> | none"),
    ("fscontext", "FSCONTEXT", True, False, "<selinux fscontext>"),
    ("guid", "GUID", False, False, "<uint64>"),
    ("keyformat", "KEYFORMAT", False, False, "none | raw | hex | passphrase"),
    ("keylocation", "KEYLOCATION", True, False, "prompt | <file URI> | <https URL> | <http URL>"),
    ("keystatus", "KEYSTATUS", False, False, "none | unavailable | available"),
    ("logbias", "LOGBIAS", True, True, "latency | throughput"),
    ("logicalreferenced", "LREFER", False, False, "<size>"),
    ("logicalused", "LUSED", False, False, "<size>"),
    ("mlslabel", "MLSLABEL", True, True, "<sensitivity label>"),
    ("mounted", "MOUNTED", False, False, "yes | no"),
    ("mountpoint", "MOUNTPOINT", True, True, "<path> | legacy | none"),
    ("nbmand", "NBMAND", True, True, "on | off"),
    ("normalization", "NORMALIZATION", False, True, "none | formC | formD | formKC | formKD"),
    ("objsetid", "OBJSETID", False, False, "<uint64>"),
    ("origin", "ORIGIN", False, False, "<snapshot>"),
    ("overlay", "OVERLAY", True, True, "on | off"),
    ("pbkdf2iters", "PBKDF2ITERS", False, False, "<iters>"),
    ("prefetch", "PREFETCH", True, True, "none | metadata | all"),
    ("primarycache", "PRIMARYCACHE", True, True, "all | none | metadata"),
    ("quota", "QUOTA", True, False, "<size> | none"),
    ("readonly", "RDONLY", True, True, "on | off"),
    ("receive_resume_token", "RESUMETOK", False, False, "<string token>"),
    ("recordsize", "RECSIZE", True, True, "512 to 1M, power of 2"),
    ("redact_snaps", "RSNAPS", False, False, "<snapshot>[,...]"),
    ("redundant_metadata", "REDUND_MD", True, True, "all | most | some | none"),
    ("refcompressratio", "REFRATIO", False, False, "<1.00x or higher if compressed>"),
    ("referenced", "REFER", False, False, "<size>"),
    ("refquota", "REFQUOTA", True, False, "<size> | none"),
    ("refreservation", "REFRESERV", True, False, "<size> | none"),
    ("relatime", "RELATIME", True, True, "on | off"),
    ("reservation", "RESERV", True, False, "<size> | none"),
    ("rootcontext", "ROOTCONTEXT", True, False, "<selinux rootcontext>"),
    ("secondarycache", "SECONDARYCACHE", True, True, "all | none | metadata"),
    ("setuid", "SETUID", True, True, "on | off"),
    ("sharenfs", "SHARENFS", True, True, "on | off | NFS share options"),
    ("sharesmb", "SHARESMB", True, True, "on | off | SMB share options"),
    ("snapdev", "SNAPDEV", True, True, "hidden | visible"),
    ("snapdir", "SNAPDIR", True, True, "hidden | visible"),
    ("snapshot_count", "SSCOUNT", False, False, "<count>"),
    ("snapshot_limit", "SSLIMIT", True, False, "<count> | none"),
    ("snapshots_changed", "SNAPSHOTS_CHANGED", False, False, "<date>"),
    ("special_small_blocks", "SPECIAL_SMALL_BLOCKS", True, True, "zero or 512 to 1M, power of 2"),
    ("sync", "SYNC", True, True, "standard | always | disabled"),
    ("type", "TYPE", False, False, "filesystem | volume | snapshot | bookmark"),
    ("used", "USED", False, False, "<size>"),
    ("usedbychildren", "USEDCHILD", False, False, "<size>"),
    ("usedbydataset", "USEDDS", False, False, "<size>"),
    ("usedbyrefreservation", "USEDREFRESERV", False, False, "<size>"),
    ("usedbysnapshots", "USEDSNAP", False, False, "<size>"),
    ("userrefs", "USERREFS", False, False, "<count>"),
    ("utf8only", "UTF8ONLY", False, True, "on | off"),
    ("version", "VERSION", True, False, "1 | 2 | 3 | 4 | 5 | current"),
    ("volblocksize", "VOLBLOCK", False, True, "512 to 128k, power of 2"),
    ("volmode", "VOLMODE", True, True, "default | full | geom | dev | none"),
    ("volsize", "VOLSIZE", True, False, "<size>"),
    ("vscan", "VSCAN", True, True, "on | off"),
    ("written", "WRITTEN", False, False, "<size>"),
    ("xattr", "XATTR", True, True, "on | off | dir | sa"),
    ("zoned", "ZONED", True, True, "on | off"),
)
