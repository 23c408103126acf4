"""`emm profiles`: list the shipped profiles and the types in PostgreSQL, show a type's rows, or
import a profile (a file, or a shipped one by its type) into PostgreSQL.

An import first compares the profile with the type's rows in the database: `--dry-run` prints
the rows that would be added, removed or changed and stops; rows that meters use are replaced
only with `--force`, so a one-row file never silently takes the place of the map a meter reads.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from emm.errors import ConfigError, DatabaseError, Misconfigured
from emm.planner import ReadLimits
from emm.profiles import Profile, ProfileRegister, load_profile, shipped_profile, shipped_profiles
from emm.registers import DataType, Order, Register
from emm.settings import MigrateSettings
from postgres.connection import connect
from postgres.profiles import StoredType, import_profile, meters_using, stored_type, stored_types


def run(args: argparse.Namespace) -> int:
    """Run `emm profiles list | show | import`."""
    if args.profiles_command == "list":
        return _list()
    if args.profiles_command == "show":
        return _show(args.type)
    return _import(args.profile, dry_run=args.dry_run, force=args.force)


def _dsn() -> str:
    return MigrateSettings.from_env().postgres_dsn


def _print_table(header: list[str], rows: list[list[str]], right: set[int]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def _list() -> int:
    """The shipped profiles and the types with rows in PostgreSQL, saying where each is."""
    shipped = {p.type: p for p in shipped_profiles()}
    dsn = _dsn()
    try:
        with connect(dsn, timeout_s=2) as conn:
            stored = stored_types(conn)
    except (DatabaseError, Misconfigured) as exc:  # no schema: the shipped ones still are
        print(f"warning: {exc}; listing the shipped profiles only", file=sys.stderr)
        stored = {}
    rows = []
    for type_ in sorted(shipped.keys() | stored.keys()):
        profile = shipped.get(type_)
        where = "both" if profile and type_ in stored else "shipped" if profile else "database"
        # the database's rows are what the scheduler reads, so their count comes first
        count, name = stored.get(type_, (0, ""))
        if profile is not None:
            count, name = (count if type_ in stored else len(profile.rows)), profile.name
        rows.append([type_, where, str(count), name])
    _print_table(["type", "from", "registers", "name"], rows, right={2})
    return 0


def _show(type_: str) -> int:
    """A type's rows: PostgreSQL's when reachable and it has them, else the shipped profile's."""
    stored, note = _stored(type_)
    if stored is not None:
        for message in stored.skipped:
            print(f"warning: {message}", file=sys.stderr)
        print(f"{type_} from PostgreSQL ({len(stored.rows)} rows)", file=sys.stderr)
        rows, limits = stored.rows, stored.limits
    else:
        profile = shipped_profile(type_)
        if profile is None:
            raise ConfigError(
                f"type {type_!r} is neither a shipped profile nor in the registers table{note}"
            )
        print(f"{type_} from the shipped profile {profile.path}{note}", file=sys.stderr)
        rows, limits = profile.rows, profile.limits
    table = [
        [
            r.register.name,
            str(r.register.address),
            str(r.register.function_code),
            _type_text(r.register),
            r.register.order.value,
            r.register.unit,
            f"{r.register.scale:g}"
            + (f" x 10^{r.register.scale_register}" if r.register.scale_register else ""),
            r.source,
        ]
        for r in rows
    ]
    _print_table(
        ["name", "address", "fc", "type", "order", "unit", "scale", "source"], table, {1, 2, 6}
    )
    print(
        f"max_read_registers {limits.max_registers}, max_read_bits {limits.max_bits}, "
        f"max_gap_registers {limits.max_gap}",
        file=sys.stderr,
    )
    return 0


def _type_text(register: Register) -> str:
    """The type as `show` prints it: string(N), an enum or bitfield marked as such."""
    name = register.data_type.name.lower()
    if register.length:
        return f"{name}({register.length})"
    if register.enum:
        return f"{name} enum"
    if register.bits:
        return f"{name} bits"
    return name


def _stored(type_: str) -> tuple[StoredType | None, str]:
    """The type as PostgreSQL holds it (None when it has no rows or PostgreSQL cannot be
    reached), and a note saying why PostgreSQL was not asked."""
    dsn = _dsn()
    try:
        with connect(dsn, timeout_s=2) as conn:
            return stored_type(conn, type_), ""
    except (DatabaseError, Misconfigured) as exc:
        return None, f" (PostgreSQL not used: {exc})"


def resolve(name: str) -> Profile:
    """A profile file, or else the shipped profile of that type."""
    path = Path(name)
    if path.exists() or path.suffix == ".toml" or len(path.parts) > 1:
        return load_profile(path)
    profile = shipped_profile(name)
    if profile is None:
        known = ", ".join(p.type for p in shipped_profiles())
        raise ConfigError(f"{name!r} is neither a profile file nor a shipped profile ({known})")
    return profile


@dataclass(frozen=True)
class Change:
    """How a profile's rows differ from its type's rows in the database, by register name."""

    added: list[str]
    removed: list[str]
    changed: dict[str, list[str]]
    limits: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.limits)


_COMPARED = ("address", "function_code", "data_type", "order", "unit", "scale", "offset", "missing")


def compare(old: tuple[ProfileRegister, ...], old_limits: ReadLimits, new: Profile) -> Change:
    """What storing `new` changes in rows `old` (read with limits `old_limits`)."""
    before = {r.register.name: r for r in old}
    after = {r.register.name: r for r in new.rows}
    changed: dict[str, list[str]] = {}
    for name in before.keys() & after.keys():
        a, b = before[name], after[name]
        diffs = [
            f"{key} {_show_value(was)} -> {_show_value(now)}"
            for key in _COMPARED
            if (was := getattr(a.register, key)) != (now := getattr(b.register, key))
        ]
        if a.source != b.source:
            diffs.append("source")
        if diffs:
            changed[name] = diffs
    limits = [
        f"{key} {getattr(old_limits, attr)} -> {getattr(new.limits, attr)}"
        for key, attr in (
            ("max_read_registers", "max_registers"),
            ("max_read_bits", "max_bits"),
            ("max_gap_registers", "max_gap"),
        )
        if getattr(old_limits, attr) != getattr(new.limits, attr)
    ]
    return Change(
        added=[n for n in after if n not in before],
        removed=[n for n in before if n not in after],
        changed={n: changed[n] for n in after if n in changed},
        limits=limits,
    )


def _show_value(value: object) -> str:
    if value is None:
        return "default"
    if isinstance(value, frozenset):
        return ",".join(f"{v:#x}" for v in sorted(value))
    if isinstance(value, DataType):
        return value.name.lower()
    return repr(value) if isinstance(value, str) and not isinstance(value, Order) else str(value)


def _print_change(change: Change) -> None:
    for name in change.added:
        print(f"  + {name}")
    for name in change.removed:
        print(f"  - {name}")
    for name, diffs in change.changed.items():
        print(f"  ~ {name}: {', '.join(diffs)}")
    for diff in change.limits:
        print(f"  ~ {diff}")


def _import(name: str, *, dry_run: bool, force: bool) -> int:
    """Store the profile's rows unless that would silently replace rows meters read."""
    profile = resolve(name)
    with connect(_dsn()) as conn:
        stored = stored_type(conn, profile.type)
        meters = meters_using(conn, profile.type)
        old_rows = stored.rows if stored else ()
        change = compare(old_rows, stored.limits if stored else profile.limits, profile)
        counts = (
            f"{len(change.added)} added, {len(change.removed)} removed, "
            f"{len(change.changed)} changed"
        )
        used = f"; {meters} meter(s) use the type" if meters else ""
        if not change:
            print(f"type {profile.type!r} is up to date ({len(profile.rows)} rows): nothing to do")
            return 0
        if dry_run:
            print(f"type {profile.type!r} from {profile.path}: rows {counts}{used}")
            _print_change(change)
            print("dry run: nothing written")
            return 0
        if old_rows and meters and not force:
            print(
                f"emm profiles: type {profile.type!r} is used by {meters} meter(s): refusing to "
                f"replace its {len(old_rows)} rows ({counts}); see the change with --dry-run, "
                "replace with --force",
                file=sys.stderr,
            )
            return 1
        import_profile(conn, profile, replace=True)
    print(f"imported {len(profile.rows)} registers of type {profile.type!r} from {profile.path}")
    return 0
