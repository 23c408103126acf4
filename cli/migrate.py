"""`emm migrate`: create or upgrade the schema, then load the shipped profiles."""

from __future__ import annotations

import argparse

from emm.log import setup_logging
from emm.profiles import shipped_profiles
from emm.settings import MigrateSettings
from postgres.connection import connect
from postgres.profiles import import_profile
from postgres.schema import grant_read, migrate


def run(args: argparse.Namespace) -> int:
    """Apply the pending migrations and load the shipped profiles whose type has no registers."""
    settings = MigrateSettings.from_env()
    setup_logging(settings.log_level, "migrate", settings.log_format)
    seed_host = None if args.no_seed else (args.seed_host or settings.seed_host)
    seed_port = args.seed_port or settings.seed_port
    with connect(settings.postgres_dsn) as conn:
        applied = migrate(conn, seed_host=seed_host, seed_port=seed_port)
        loaded = []
        if not args.no_profiles:
            for profile in shipped_profiles():
                if import_profile(conn, profile, replace=False):
                    loaded.append(profile.type)
        if args.grant_read:
            grant_read(conn, args.grant_read)
    if applied:
        print(f"applied migration(s) {', '.join(map(str, applied))}")
    else:
        print("schema is up to date")
    if loaded:
        print(f"loaded profile(s) {', '.join(loaded)}")
    if args.grant_read:
        print(f"role {args.grant_read} may read the tables")
    return 0
