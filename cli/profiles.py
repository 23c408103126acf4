"""`emm profiles`: list the shipped device profiles, or import a profile file into PostgreSQL."""

from __future__ import annotations

import argparse

from emm.profiles import load_profile, shipped_profiles


def run(args: argparse.Namespace) -> int:
    """List the shipped profiles, or store a profile file's rows (replacing its type's)."""
    if args.profiles_command == "list":
        print(f"{'type':<16} {'registers':>9} {'max/read':>8}  name")
        for p in shipped_profiles():
            print(f"{p.type:<16} {len(p.rows):>9} {p.limits.max_registers:>8}  {p.name}")
        return 0
    from emm.settings import MigrateSettings
    from postgres.connection import connect
    from postgres.profiles import import_profile

    profile = load_profile(args.file)
    settings = MigrateSettings.from_env()
    with connect(settings.postgres_dsn) as conn:
        import_profile(conn, profile, replace=True)
    print(f"imported {len(profile.rows)} registers of type {profile.type!r} from {args.file}")
    return 0
