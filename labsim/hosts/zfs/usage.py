"""The usage texts ``zfs`` prints: every subcommand of OpenZFS 2.2.7 and the property trailer."""

from __future__ import annotations

_USAGE_PROPERTY_TRAILER = (
    "".join(
        f"\t{name:<15} {flags}\n"
        for name, flags in (
            *((f"{w}used@...", " NO       NO   <size>") for w in ("user", "group", "project")),
            *((f"{w}objused@...", " NO       NO   <size>") for w in ("user", "group", "project")),
            *(
                (f"{w}quota@...", "YES       NO   <size> | none")
                for w in ("user", "group", "project")
            ),
            *(
                (f"{w}objquota@...", "YES       NO   <size> | none")
                for w in ("user", "group", "project")
            ),
            ("written@<snap>", " NO       NO   <size>"),
            ("written#<bookmark>", " NO       NO   <size>"),
        )
    )
    + "\nSizes are specified in bytes with standard units such as K, M, G, etc.\n"
    + "\nUser-defined properties can be specified by using a name containing a colon (:).\n"
    + "\nThe {user|group|project}[obj]{used|quota}@ properties must be appended with\n"
    + "a user|group|project specifier of one of these forms:\n"
    + '    POSIX name      (eg: "matt")\n'
    + '    POSIX id        (eg: "126829")\n'
    + '    SMB name@domain (eg: "matt@sun")\n'
    + '    SMB SID         (eg: "S-1-234-567-89")\n'
)

# (command, usage) in the order `zfs` prints them; None is a blank line.
_COMMANDS: tuple[tuple[str, str] | None, ...] = (
    ("version", "\tversion\n"),
    None,
    (
        "create",
        (
            "\tcreate [-Pnpuv] [-o property=value] ... <filesystem>\n"
            "\tcreate [-Pnpsv] [-b blocksize] [-o property=value] ... -V <size> <volume>\n"
        ),
    ),
    (
        "destroy",
        (
            "\tdestroy [-fnpRrv] <filesystem|volume>\n"
            "\tdestroy [-dnpRrv] <filesystem|volume>@<snap>[%<snap>][,...]\n"
            "\tdestroy <filesystem|volume>#<bookmark>\n"
        ),
    ),
    None,
    ("snapshot", "\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...\n"),
    ("rollback", "\trollback [-rRf] <snapshot>\n"),
    ("clone", "\tclone [-p] [-o property=value] ... <snapshot> <filesystem|volume>\n"),
    ("promote", "\tpromote <clone-filesystem>\n"),
    (
        "rename",
        (
            "\trename [-f] <filesystem|volume|snapshot> <filesystem|volume|snapshot>\n"
            "\trename -p [-f] <filesystem|volume> <filesystem|volume>\n"
            "\trename -u [-f] <filesystem> <filesystem>\n"
            "\trename -r <snapshot> <snapshot>\n"
        ),
    ),
    ("bookmark", "\tbookmark <snapshot|bookmark> <newbookmark>\n"),
    (
        "program",
        (
            "\tprogram [-jn] [-t <instruction limit>] [-m <memory limit (b)>]\n"
            "\t    <pool> <program file> [lua args...]\n"
        ),
    ),
    None,
    (
        "list",
        (
            "\tlist [-Hp] [-r|-d max] [-o property[,...]] [-s property]...\n"
            "\t    [-S property]... [-t type[,...]] [filesystem|volume|snapshot] ...\n"
        ),
    ),
    None,
    ("set", "\tset [-u] <property=value> ... <filesystem|volume|snapshot> ...\n"),
    (
        "get",
        (
            '\tget [-rHp] [-d max] [-o "all" | field[,...]]\n'
            "\t    [-t type[,...]] [-s source[,...]]\n"
            '\t    <"all" | property[,...]> [filesystem|volume|snapshot|bookmark] ...\n'
        ),
    ),
    ("inherit", "\tinherit [-rS] <property> <filesystem|volume|snapshot> ...\n"),
    (
        "upgrade",
        ("\tupgrade [-v]\n\tupgrade [-r] [-V version] <-a | filesystem ...>\n"),
    ),
    None,
    (
        "userspace",
        (
            "\tuserspace [-Hinp] [-o field[,...]] [-s field] ...\n"
            "\t    [-S field] ... [-t type[,...]] <filesystem|snapshot|path>\n"
        ),
    ),
    (
        "groupspace",
        (
            "\tgroupspace [-Hinp] [-o field[,...]] [-s field] ...\n"
            "\t    [-S field] ... [-t type[,...]] <filesystem|snapshot|path>\n"
        ),
    ),
    (
        "projectspace",
        (
            "\tprojectspace [-Hp] [-o field[,...]] [-s field] ... \n"
            "\t    [-S field] ... <filesystem|snapshot|path>\n"
        ),
    ),
    None,
    (
        "project",
        (
            "\tproject [-d|-r] <directory|file ...>\n"
            "\tproject -c [-0] [-d|-r] [-p id] <directory|file ...>\n"
            "\tproject -C [-k] [-r] <directory ...>\n"
            "\tproject [-p id] [-r] [-s] <directory ...>\n"
        ),
    ),
    None,
    (
        "mount",
        ("\tmount\n\tmount [-flvO] [-o opts] <-a|-R filesystem|filesystem>\n"),
    ),
    ("unmount", "\tunmount [-fu] <-a | filesystem|mountpoint>\n"),
    ("share", "\tshare [-l] <-a [nfs|smb] | filesystem>\n"),
    ("unshare", "\tunshare <-a [nfs|smb] | filesystem|mountpoint>\n"),
    None,
    (
        "send",
        (
            "\tsend [-DLPbcehnpsVvw] [-i|-I snapshot]\n"
            "\t     [-R [-X dataset[,dataset]...]]     <snapshot>\n"
            "\tsend [-DnVvPLecw] [-i snapshot|bookmark] <filesystem|volume|snapshot>\n"
            "\tsend [-DnPpVvLec] [-i bookmark|snapshot] --redact <bookmark> <snapshot>\n"
            "\tsend [-nVvPe] -t <receive_resume_token>\n"
            "\tsend [-PnVv] --saved filesystem\n"
        ),
    ),
    (
        "receive",
        (
            "\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ...\n"
            "\t    <filesystem|volume|snapshot>\n"
            "\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ... \n"
            "\t    [-d | -e] <filesystem>\n"
            "\treceive -A <filesystem|volume>\n"
        ),
    ),
    None,
    (
        "allow",
        (
            "\tallow <filesystem|volume>\n"
            '\tallow [-ldug] <"everyone"|user|group>[,...] <perm|@setname>[,...]\n'
            "\t    <filesystem|volume>\n"
            "\tallow [-ld] -e <perm|@setname>[,...] <filesystem|volume>\n"
            "\tallow -c <perm|@setname>[,...] <filesystem|volume>\n"
            "\tallow -s @setname <perm|@setname>[,...] <filesystem|volume>\n"
        ),
    ),
    None,
    (
        "unallow",
        (
            '\tunallow [-rldug] <"everyone"|user|group>[,...]\n'
            "\t    [<perm|@setname>[,...]] <filesystem|volume>\n"
            "\tunallow [-rld] -e [<perm|@setname>[,...]] <filesystem|volume>\n"
            "\tunallow [-r] -c [<perm|@setname>[,...]] <filesystem|volume>\n"
            "\tunallow [-r] -s @setname [<perm|@setname>[,...]] <filesystem|volume>\n"
        ),
    ),
    None,
    ("hold", "\thold [-r] <tag> <snapshot> ...\n"),
    ("holds", "\tholds [-rHp] <snapshot> ...\n"),
    ("release", "\trelease [-r] <tag> <snapshot> ...\n"),
    ("diff", "\tdiff [-FHth] <snapshot> [snapshot|filesystem]\n"),
    ("load-key", "\tload-key [-rn] [-L <keylocation>] <-a | filesystem|volume>\n"),
    ("unload-key", "\tunload-key [-r] <-a | filesystem|volume>\n"),
    (
        "change-key",
        (
            "\tchange-key [-l] [-o keyformat=<value>]\n"
            "\t    [-o keylocation=<value>] [-o pbkdf2iters=<value>]\n"
            "\t    <filesystem|volume>\n"
            "\tchange-key -i [-l] <filesystem|volume>\n"
        ),
    ),
    ("redact", "\tredact <snapshot> <bookmark> <redaction_snapshot> ...\n"),
    ("wait", "\twait [-t <activity>] <filesystem>\n"),
    ("zone", "\tzone <nsfile> <filesystem>\n"),
    ("unzone", "\tunzone <nsfile> <filesystem>\n"),
)
_USAGE = {entry[0]: entry[1] for entry in _COMMANDS if entry is not None}
