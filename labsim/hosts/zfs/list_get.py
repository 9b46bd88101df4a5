"""The ``zfs list`` and ``zfs get`` subcommands."""

from __future__ import annotations

from labsim.hosts.zfs.args import _getopt, _UsageError
from labsim.hosts.zfs.libzfs import _Libzfs, _Obj
from labsim.hosts.zfs.names import _BOOKMARK, _DATASET, _FS, _SNAP, _VOL, _user_prop
from labsim.hosts.zfs.output import _align, _get_line
from labsim.hosts.zfs.properties import (
    _SIM_BY_NAME,
    _SIM_PROPS,
    _SRC_ALL,
    _SRC_DEFAULT,
    _SRC_INHERITED,
    _SRC_LOCAL,
    _SRC_NONE,
    _SRC_RECEIVED,
    _SRC_TEMPORARY,
    _find_prop,
    _Prop,
)


class _ListGet(_Libzfs):
    """``zfs list`` and ``zfs get``."""

    # ---- zfs list

    def do_list(self, args: list[str]) -> int:
        opts, operands = _getopt(args, "HS:d:o:prs:t:")
        fields = "name,used,available,referenced,mountpoint"
        types = _DATASET
        types_specified = False
        listsnaps = True
        literal = scripted = recurse = False
        limit: int | None = None
        sortcols: list[tuple[_Prop, bool]] = []
        for c, arg in opts:
            if c == "o":
                fields = arg
            elif c == "p":
                literal = True
            elif c == "d":
                limit = self._parse_depth(arg)
                recurse = True
            elif c == "r":
                recurse = True
            elif c == "H":
                scripted = True
            elif c in "sS":
                prop = _find_prop(arg) or (
                    _Prop(arg, arg.upper(), "user") if _user_prop(arg) else None
                )
                if prop is None:
                    self.error(f"invalid property '{arg}'")
                    raise _UsageError
                sortcols.append((prop, c == "S"))
            elif c == "t":
                types = 0
                types_specified = True
                listsnaps = False
                for word in arg.split(","):
                    bits = _TYPE_WORDS.get(word)
                    if bits is None:
                        self.error(f"invalid type '{word}'")
                        raise _UsageError
                    types |= bits
            else:
                self._invalid_option(arg)
        if fields == "space" and not types_specified:
            types &= ~_SNAP
        if types in (_SNAP, _BOOKMARK) and operands and not recurse:
            recurse, limit = True, 1
        props = self._prop_list(fields)
        objs, ret = self._for_each(
            operands,
            types=types,
            recurse=recurse,
            limit=limit,
            listsnaps=listsnaps,
            paths=True,
            sortcols=sortcols,
        )
        if not objs:
            if ret == 0 and not scripted:
                self.error("no datasets available")
            return ret
        columns = props if props is not None else self._all_props(objs)
        widths = [self._width(col, objs, literal) for col in columns]
        if not scripted:
            cells = []
            for i, col in enumerate(columns):
                right = col.right and col.kind not in ("user", "special")
                last = i == len(columns) - 1
                cells.append(_align(col.column, widths[i], right, last))
            self.print("  ".join(cells))
        for obj in objs:
            cells = []
            for i, col in enumerate(columns):
                value = self._value(obj, col, literal)
                text = "-" if value is None else value
                last = i == len(columns) - 1
                cells.append(text if scripted else _align(text, widths[i], col.right, last))
            self.print(("\t" if scripted else "  ").join(cells))
        return ret

    def _all_props(self, objs: list[_Obj]) -> list[_Prop]:
        """The columns of `-o all`: name, the simulated native properties, user properties."""
        cols = [_SIM_BY_NAME["name"], *(p for p in _SIM_PROPS if p.name != "name")]
        seen: set[str] = set()
        for obj in objs:
            for source in (obj.snap.properties if obj.snap else {}, obj.ds.properties):
                for name in source:
                    if _user_prop(name) and name not in seen:
                        seen.add(name)
                        cols.append(_Prop(name, name.upper(), "user"))
        return cols

    def _width(self, col: _Prop, objs: list[_Obj], literal: bool) -> int:
        width = col.initial_width()
        if col.fixed and not literal:
            return width
        for obj in objs:
            value = self._value(obj, col, literal)
            if value is not None:
                width = max(width, len(value))
        return width

    # ---- zfs get

    def do_get(self, args: list[str]) -> int:
        opts, operands = _getopt(args, ":d:o:s:rt:Hp")
        literal = scripted = recurse = False
        limit: int | None = None
        columns = ["name", "property", "value", "source"]
        sources = _SRC_ALL
        types = _DATASET | _BOOKMARK
        for c, arg in opts:
            if c == "p":
                literal = True
            elif c == "d":
                limit = self._parse_depth(arg)
                recurse = True
            elif c == "r":
                recurse = True
            elif c == "H":
                scripted = True
            elif c == ":":
                self.error(f"missing argument for '{arg}' option")
                raise _UsageError
            elif c == "o":
                columns = []
                for word in arg.split(","):
                    if len(columns) == 5:
                        self.error("too many fields given to -o option")
                        raise _UsageError
                    if word == "all":
                        if columns:
                            self.error('"all" conflicts with specific fields given to -o option')
                            raise _UsageError
                        columns = ["name", "property", "value", "received", "source"]
                    elif word in ("name", "property", "value", "received", "source"):
                        columns.append(word)
                    else:
                        self.error(f"invalid column name '{word}'")
                        raise _UsageError
            elif c == "s":
                sources = 0
                for word in arg.split(","):
                    bit = _SOURCE_WORDS.get(word)
                    if bit is None:
                        self.error(f"invalid source '{word}'")
                        raise _UsageError
                    sources |= bit
            elif c == "t":
                types = 0
                for word in arg.split(","):
                    bits = _GET_TYPE_WORDS.get(word)
                    if bits is None:
                        self.error(f"invalid type '{word}'")
                        raise _UsageError
                    types |= bits
            else:
                self._invalid_option(arg)
        if not operands:
            self.error("missing property argument")
            raise _UsageError
        fields, targets = operands[0], operands[1:]
        if types in (_SNAP, _BOOKMARK) and targets and not recurse:
            recurse, limit = True, 1
        props = self._prop_list(fields)
        objs, ret = self._for_each(targets, types=types, recurse=recurse, limit=limit, paths=True)
        rows: list[tuple[str, str, str, str]] = []  # name, property, value, source
        value_width = 5
        prop_width = 8
        name_width = max([4, *(len(obj.name) for obj in objs)])
        plist = props if props is not None else self._all_props(objs)[1:]
        for prop in plist:
            prop_width = max(prop_width, len(prop.name))
            value_width = max(value_width, self._width(prop, objs, literal))
        for obj in objs:
            for prop in plist:
                value = self._value(obj, prop, literal)
                if value is None and props is None:
                    continue  # `get all` skips what does not apply
                kind, source = self._source(obj, prop) if value is not None else (_SRC_NONE, "")
                if not kind & sources:
                    continue
                rows.append(
                    (obj.name, prop.name, "-" if value is None else value, _SOURCE_TEXT[kind])
                )
                if kind == _SRC_INHERITED:
                    rows[-1] = (*rows[-1][:3], f"inherited from {source}")
        widths = {
            "name": name_width,
            "property": prop_width,
            "value": value_width,
            "received": 8,
            "source": name_width + len("inherited from") if name_width > 4 else 6,
        }
        if rows and not scripted:
            head = [c.upper() for c in columns]
            self.print(_get_line(head, columns, widths, scripted))
        for name, prop_name, value, source in rows:
            fields_by_col = {
                "name": name,
                "property": prop_name,
                "value": value,
                "received": "-",
                "source": source,
            }
            cells = [fields_by_col[c] for c in columns]
            self.print(_get_line(cells, columns, widths, scripted))
        return ret


_TYPE_WORDS = {
    "filesystem": _FS,
    "fs": _FS,
    "volume": _VOL,
    "vol": _VOL,
    "snapshot": _SNAP,
    "snap": _SNAP,
    "bookmark": _BOOKMARK,
    "all": _DATASET | _BOOKMARK,
}
_GET_TYPE_WORDS = {
    "filesystem": _FS,
    "volume": _VOL,
    "snapshot": _SNAP,
    "snap": _SNAP,
    "bookmark": _BOOKMARK,
    "all": _DATASET | _BOOKMARK,
}
_SOURCE_WORDS = {
    "local": _SRC_LOCAL,
    "default": _SRC_DEFAULT,
    "inherited": _SRC_INHERITED,
    "received": _SRC_RECEIVED,
    "temporary": _SRC_TEMPORARY,
    "none": _SRC_NONE,
}
_SOURCE_TEXT = {
    _SRC_NONE: "-",
    _SRC_DEFAULT: "default",
    _SRC_LOCAL: "local",
    _SRC_TEMPORARY: "temporary",
    _SRC_INHERITED: "inherited",
    _SRC_RECEIVED: "received",
}
